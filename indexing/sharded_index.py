"""Sharded FAISS indexes searched as one: every shard's top k, merged exactly by (distance, id).

A sharded bundle (:mod:`dscmr.indexing.shards` builds it) keeps one index file per shard, all filled from the same
trained, empty index: the same IVF coarse quantizer and PQ codebooks, the same (empty) Flat or BFlat. Shard i's
local id j is mapped to a bundle id through the shard's ``ranges`` in the manifest (:class:`IdMap`).

Search asks every shard for its ``k`` best and keeps the ``k`` best of the union, ordered by (distance, id). Each
shard's local ids increase with the bundle ids they stand for (a build gives each shard one run of consecutive
ids; every later add appends larger ids), so a shard whose own result is id-stable under ties (Flat, BFlat with
counting selection, IVF) gives, merged, the result of one index holding every vector: the same ids and distances.
For an IVF index the coarse quantizer runs once, on the shared quantizer, and each shard scans the same ``nprobe``
lists (``search_preassigned``), so a sharded IVF equals the single IVF at the same ``nprobe``.

The indexes are read one file per shard, each memory-mapped where FAISS can map its type (as in a plain bundle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dscmr.errors import IndexBundleError, QueryError
from dscmr.indexing.arrays import as_codes, as_float_matrix, check_k, l2_normalize, sort_by_distance_then_id
from dscmr.indexing.binary_index import BinaryIndex
from dscmr.indexing.float_index import FloatIndex
from dscmr.indexing.manifest import BINARY_FILE, FLOAT_FILE, Manifest, ShardInfo


class IdMap:
    """Local ids of one shard -> bundle ids, from its ``(first_id, count)`` runs."""

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.first = np.array([a for a, _ in ranges], dtype=np.int64)  # (runs,)
        counts = np.array([c for _, c in ranges], dtype=np.int64)
        self.local = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # local id of each run's start
        self.count = int(counts.sum())

    def to_global(self, I: np.ndarray) -> np.ndarray:
        """Bundle ids of local ids ``I`` (any shape); -1 stays -1."""
        I = np.asarray(I, dtype=np.int64)
        if self.first.size == 1:
            return np.where(I < 0, -1, I + self.first[0])
        run = np.searchsorted(self.local, np.maximum(I, 0), side="right") - 1
        return np.where(I < 0, -1, self.first[run] + (I - self.local[run]))


def merge_topk(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, *, descending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of per-shard results ``(D, I)`` (bundle ids), ordered by (distance, id); -1 ids go last."""
    D = np.concatenate([d for d, _ in parts], axis=1)  # (nq, shards * k)
    I = np.concatenate([i for _, i in parts], axis=1)
    D, I = sort_by_distance_then_id(D, I, descending=descending)
    return np.ascontiguousarray(D[:, :k]), np.ascontiguousarray(I[:, :k])


_ID_BITS = 40  # bundle ids below 2**40 pack with a Hamming distance into one int64 key


def merge_hamming(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, *, ordered: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`merge_topk` for integer (Hamming) distances, by selection on one int64 key ``distance << 40 | id``.

    The same set as :func:`merge_topk`; ``ordered=False`` skips sorting it (a hybrid shortlist is re-ranked anyway):
    0.2 ms instead of 3 ms for 4 shards x 8,001 candidates.
    """
    D = np.concatenate([d for d, _ in parts], axis=1)  # (nq, shards * k)
    I = np.concatenate([i for _, i in parts], axis=1)
    if I.size and int(I.max()) >= 1 << _ID_BITS:
        return merge_topk(parts, k, descending=False)
    key = np.where(I < 0, np.iinfo(np.int64).max, (D.astype(np.int64) << _ID_BITS) | I)
    kk = min(k, key.shape[1])
    sel = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < key.shape[1] else np.argsort(key, axis=1)
    if ordered:
        sel = np.take_along_axis(sel, np.argsort(np.take_along_axis(key, sel, axis=1), axis=1), axis=1)
    return np.take_along_axis(D, sel, axis=1), np.take_along_axis(I, sel, axis=1)


def _direct_ivf(index: faiss.Index) -> Any:
    """The index itself (downcast; ``search_preassigned`` has the numpy wrapper) when it is an IVF index with no
    transform in front, else None."""
    direct = faiss.downcast_index(index)
    return direct if isinstance(direct, faiss.IndexIVF) else None


class ShardedFloatIndex(FloatIndex):
    """Float shards searched as one index (cosine, ties by id); read-only (extend a bundle with ``add_to_bundle``).

    Args:
        template: The trained, empty index every shard was filled from (its quantizer serves IVF searches).
        shards: The shards' indexes.
        maps: Each shard's :class:`IdMap`.
    """

    def __init__(self, template: FloatIndex, shards: list[FloatIndex], maps: list[IdMap]) -> None:
        super().__init__(template.d, template.factory, index=template.index)
        self.shards, self.maps = shards, maps

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def add(self, xb: np.ndarray, *, chunk: int = 65536, progress: object = None) -> None:  # type: ignore[override]
        raise IndexBundleError("a sharded index is read-only; extend its bundle with `dscmr index add`")

    def set_params(self, **params: float) -> None:
        """Set ``efSearch`` / ``nprobe`` on every shard (and the template, whose quantizer probes IVF lists)."""
        super().set_params(**params)
        for s in self.shards:
            s.set_params(**params)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most cosine-similar vectors over all shards, as :meth:`FloatIndex.search`."""
        check_k(k)
        xq = l2_normalize(as_float_matrix(xq, d=self.d, what="queries"))
        ivf = _direct_ivf(self.index)
        parts = []
        if ivf is not None:  # one coarse quantization for all shards, as a single IVF index does it
            Dq, Iq = ivf.quantizer.search(xq, ivf.nprobe)
        for shard, ids in zip(self.shards, self.maps, strict=True):
            sivf = _direct_ivf(shard.index) if ivf is not None else None
            if sivf is not None:
                sivf.nprobe = ivf.nprobe
                D, I = sivf.search_preassigned(xq, k, Iq, Dq)
            else:
                D, I = shard.index.search(xq, k)
            parts.append((D, ids.to_global(I)))
        return merge_topk(parts, k, descending=True)

    def reconstruct_all(self) -> np.ndarray:
        raise QueryError("a sharded index does not reconstruct its vectors; read the bundle's vectors.npy")

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.shards)

    def save(self, path: str | Path) -> None:
        raise IndexBundleError("a sharded index is saved shard by shard by the bundle builder")


class ShardedBinaryIndex(BinaryIndex):
    """Binary shards searched as one index (Hamming, ties by id); read-only.

    Args:
        template: The trained, empty binary index every shard was filled from.
        shards: The shards' indexes.
        maps: Each shard's :class:`IdMap`.
    """

    def __init__(self, template: BinaryIndex, shards: list[BinaryIndex], maps: list[IdMap]) -> None:
        super().__init__(template.bits, template.factory, index=template.index)
        self.shards, self.maps = shards, maps

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    def add(self, codes: np.ndarray) -> None:
        raise IndexBundleError("a sharded index is read-only; extend its bundle with `dscmr index add`")

    def set_params(self, **params: float) -> None:
        super().set_params(**params)
        for s in self.shards:
            s.set_params(**params)

    def search(self, codes_q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes over all shards, as :meth:`BinaryIndex.search`."""
        return self._merged(codes_q, k, ordered=True)

    def shortlist(self, codes_q: np.ndarray, k: int) -> np.ndarray:
        """Ids of the ``k`` nearest codes (the set :meth:`search` returns), in no promised order."""
        return self._merged(codes_q, k, ordered=False)[1]

    def _merged(self, codes_q: np.ndarray, k: int, *, ordered: bool) -> tuple[np.ndarray, np.ndarray]:
        check_k(k)
        codes_q = as_codes(codes_q, bits=self.bits, what="query codes")
        parts = []
        for shard, ids in zip(self.shards, self.maps, strict=True):
            D, I = shard.index.search(codes_q, k)
            parts.append((D, ids.to_global(I)))
        return merge_hamming(parts, k, ordered=ordered)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.shards)

    def save(self, path: str | Path) -> None:
        raise IndexBundleError("a sharded index is saved shard by shard by the bundle builder")


def _checked(n: int, shard: ShardInfo, where: Path) -> None:
    if n != shard.count:
        raise IndexBundleError(
            f"{where} holds {n} items, the manifest's shard says {shard.count} (a mixed-up file); rebuild the bundle"
        )


def load_sharded_float(folder: Path, m: Manifest, *, mmap: bool) -> ShardedFloatIndex:
    """The float shards of a sharded bundle in ``folder`` (each memory-mapped where FAISS can)."""
    assert m.float is not None and m.shards is not None
    template = FloatIndex.load(folder / FLOAT_FILE, factory=m.float.factory, d=m.dim, mmap=False)
    shards = []
    for info in m.shards:
        if info.float is None:
            raise IndexBundleError(f"{folder}: a shard of the manifest names no float index file; rebuild the bundle")
        shard = FloatIndex.load(folder / info.float, factory=m.float.factory, d=m.dim, mmap=mmap)
        _checked(shard.ntotal, info, folder / info.float)
        shards.append(shard)
    return ShardedFloatIndex(template, shards, [IdMap(s.ranges) for s in m.shards])


def load_sharded_binary(folder: Path, m: Manifest, *, mmap: bool) -> ShardedBinaryIndex:
    """The binary shards of a sharded bundle in ``folder``."""
    assert m.binary is not None and m.shards is not None
    template = BinaryIndex.load(folder / BINARY_FILE, factory=m.binary.factory, bits=m.binary.bits, mmap=False)
    shards = []
    for info in m.shards:
        if info.binary is None:
            raise IndexBundleError(f"{folder}: a shard of the manifest names no binary index file; rebuild the bundle")
        shard = BinaryIndex.load(folder / info.binary, factory=m.binary.factory, bits=m.binary.bits, mmap=mmap)
        _checked(shard.ntotal, info, folder / info.binary)
        shards.append(shard)
    return ShardedBinaryIndex(template, shards, [IdMap(s.ranges) for s in m.shards])


__all__ = [
    "IdMap",
    "ShardedBinaryIndex",
    "ShardedFloatIndex",
    "load_sharded_binary",
    "load_sharded_float",
    "merge_hamming",
    "merge_topk",
]
