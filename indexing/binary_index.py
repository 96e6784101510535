"""Binary FAISS indexes of packed hash codes, ranked by Hamming distance.

Built through ``faiss.index_binary_factory``: ``"BFlat"`` (exact scan, the default), ``"BHNSW32"``,
``"BIVF256"``, ... . Codes are packed with :func:`indexing.hashing.pack_codes` (``np.packbits``).

Ties: Hamming distances take only B + 1 values, so ties are common. Results are ordered by (distance, id). For the
exact ``BFlat`` index the *set* returned is also id-stable: FAISS's per-distance counting k-selection, which this
wrapper always uses, keeps the smallest ids among equal distances (verified against a brute-force (distance, id)
sort in ``tests/indexing/test_indexes.py``, with one and two threads, single and batched queries), so no larger
fetch is needed. Approximate indexes can only order what they return.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from dscmr.errors import ConfigError, QueryError
from dscmr.indexing.arrays import as_codes, check_bits, check_k, sort_by_distance_then_id
from dscmr.indexing.float_index import _read, read_maybe_mapped

DEFAULT_BINARY_FACTORY = "BFlat"


class BinaryIndex:
    """A FAISS binary index of ``bits``-bit codes.

    Args:
        bits: Code length B (a multiple of 8).
        factory: ``faiss.index_binary_factory`` string.
    """

    def __init__(
        self, bits: int, factory: str = DEFAULT_BINARY_FACTORY, *, index: faiss.IndexBinary | None = None
    ) -> None:
        self.bits = check_bits(int(bits))
        self.factory = factory
        if index is None:
            try:
                index = faiss.index_binary_factory(self.bits, factory)
            except RuntimeError as exc:
                msg = str(exc).strip().splitlines()[-1]
                raise ConfigError(f"bad binary index factory {factory!r} for {bits} bits: {msg}") from None
        if hasattr(index, "use_heap"):
            # BFlat: FAISS's per-distance counters beat its heap at every k measured on 1M ITQ codes, one thread
            # (64 bits, k=10: 0.9-1.6 vs 1.8-2.1 ms; k=4000: 1.2-2.0 vs 4.1 ms), and keep ties id-stable.
            index.use_heap = False
        self.index = index
        self.params: dict[str, float] = {}
        self.mapped_from: Path | None = None  # the file this index is memory-mapped from (read-only), if any

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def code_size(self) -> int:
        """Bytes per code (B / 8)."""
        return self.bits // 8

    def train(self, codes: np.ndarray, *, seed: int = 0, max_train: int = 100_000) -> int:
        """Train the index (binary IVF) on a seeded sample of ``codes`` when it needs it; returns the sample size."""
        if self.index.is_trained:
            return 0
        codes = as_codes(codes, bits=self.bits, what="training codes")
        if codes.shape[0] > max_train:
            codes = codes[np.sort(np.random.default_rng(seed).choice(codes.shape[0], size=max_train, replace=False))]
        try:
            self.index.train(codes)
        except RuntimeError as exc:
            msg = str(exc).strip().splitlines()[-1]
            n = codes.shape[0]
            raise QueryError(f"cannot train {self.factory!r} on {n} codes ({msg}); use more data") from None
        return int(codes.shape[0])

    def add(self, codes: np.ndarray) -> None:
        """Add packed codes ``(n, B / 8)``; ids continue from ``ntotal``."""
        codes = as_codes(codes, bits=self.bits, what="database codes")
        if self.mapped_from is not None:  # a memory-mapped index is read-only: read it into RAM first
            index = _read(self.mapped_from, faiss.read_index_binary)
            if hasattr(index, "use_heap"):
                index.use_heap = False
            self.index, self.mapped_from = index, None
            self.set_params(**self.params)
        if not self.index.is_trained:
            raise QueryError(f"the {self.factory!r} index must be trained before adding codes; call train()")
        self.index.add(codes)

    def set_params(self, **params: float) -> None:
        """Set ``efSearch`` (BHNSW) or ``nprobe`` (BIVF); unknown or inapplicable names raise QueryError."""
        for name, value in params.items():
            if value is None:
                continue
            if name == "nprobe" and hasattr(self.index, "nprobe"):
                self.index.nprobe = int(value)
            elif name == "efSearch" and hasattr(self.index, "hnsw"):
                self.index.hnsw.efSearch = int(value)
            else:
                raise QueryError(f"the {self.factory!r} binary index has no {name} parameter")
            self.params[name] = value

    def search(self, codes_q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes by Hamming distance.

        Returns:
            ``(D, I)``: int32 Hamming distances ``(nq, k)`` ascending and int64 ids, ties ordered by id.
        """
        check_k(k)
        codes_q = as_codes(codes_q, bits=self.bits, what="query codes")
        D, I = self.index.search(codes_q, k)
        return sort_by_distance_then_id(D, I)

    def shortlist(self, codes_q: np.ndarray, k: int) -> np.ndarray:
        """Ids of the ``k`` nearest codes, ``(nq, k)`` int64 (-1 pads), in no promised order.

        The same set as :meth:`search` (id-stable for ``BFlat``) without its final (distance, id) sort, which costs
        0.3-0.4 ms per query at k = 4000-8000: for callers that re-rank the ids anyway.
        """
        check_k(k)
        codes_q = as_codes(codes_q, bits=self.bits, what="query codes")
        return np.asarray(self.index.search(codes_q, k)[1])

    def nbytes(self) -> int:
        """Serialized size of the index in bytes."""
        return int(faiss.serialize_index_binary(self.index).size)

    def save(self, path: str | Path) -> None:
        """Write the index with ``faiss.write_index_binary``."""
        faiss.write_index_binary(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, *, factory: str, bits: int, mmap: bool = False) -> BinaryIndex:
        """Read an index written by :meth:`save` (IndexBundleError when missing, truncated or of other width).

        With ``mmap`` the codes are memory-mapped read-only where FAISS supports it (``BFlat``, ``BIVF``); a mapped
        index is read into RAM again by :meth:`add`.
        """
        from dscmr.errors import IndexBundleError

        index, mapped = read_maybe_mapped(path, faiss.read_index_binary, mmap=mmap)
        if index.d != bits:
            raise IndexBundleError(f"{path}: binary index has {index.d} bits, the manifest says {bits}; rebuild")
        out = cls(bits, factory, index=index)
        out.mapped_from = Path(path) if mapped else None
        return out
