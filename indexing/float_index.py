"""Real-valued FAISS indexes ranked by cosine similarity.

Vectors are L2-normalised on the way in and searched by inner product, so every score is a cosine similarity in
[-1, 1]. Any ``faiss.index_factory`` string works (``"Flat"`` exact, ``"HNSW32"``, ``"IVF1024,Flat"``,
``"IVF1024,PQ32"``, ...). Indexes that need training are trained on a seeded sample of the database.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dscmr.errors import ConfigError, IndexBundleError, QueryError
from dscmr.indexing.arrays import as_float_matrix, check_k, l2_normalize, sort_by_distance_then_id

DEFAULT_FACTORY = "Flat"
# FAISS read flags for a memory-mapped, read-only index, tried in order: IO_FLAG_MMAP_IFC maps the file and reads
# flat codes in place (Flat, BFlat, IVF lists); IO_FLAG_MMAP maps inverted lists (it cannot be combined with the
# first: "mmap only supported for File objects").
MMAP_FLAGS = (
    faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY,
    faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY,
)
# Search-time parameters that can be set by name (faiss ParameterSpace names).
SEARCH_PARAMS = ("efSearch", "nprobe")

Progress = Callable[[int, int], None]


def train_sample_size(index: faiss.Index, n: int) -> int:
    """Vectors to train ``index`` on: enough for its k-means / PQ codebooks (about 64 per centroid), at most n."""
    nlist = 0
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nlist = ivf.nlist
    want = max(64 * nlist, 256 * 64, 50_000)
    return min(n, want)


class FloatIndex:
    """A FAISS float index of L2-normalised vectors, searched by inner product (cosine).

    Args:
        d: Vector dimension.
        factory: ``faiss.index_factory`` string.

    Raises:
        ConfigError: The factory string is not understood by FAISS.
    """

    def __init__(self, d: int, factory: str = DEFAULT_FACTORY, *, index: faiss.Index | None = None) -> None:
        self.d = int(d)
        self.factory = factory
        if index is None:
            try:
                index = faiss.index_factory(self.d, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as exc:
                msg = str(exc).strip().splitlines()[-1]
                raise ConfigError(f"bad float index factory {factory!r} for d={d}: {msg}") from None
        self.index = index
        self.params: dict[str, float] = {}
        self.mapped_from: Path | None = None  # the file this index is memory-mapped from (read-only), if any

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, xb: np.ndarray, *, seed: int = 0, max_train: int | None = None) -> int:
        """Train the index (k-means, PQ, ...) on a seeded sample of ``xb`` when it needs training.

        Returns:
            The number of training vectors used (0 when no training was needed).
        """
        if self.index.is_trained:
            return 0
        xb = as_float_matrix(xb, d=self.d, what="training vectors")
        n = min(train_sample_size(self.index, xb.shape[0]), max_train or xb.shape[0])
        if n < xb.shape[0]:
            pick = np.sort(np.random.default_rng(seed).choice(xb.shape[0], size=n, replace=False))
            xb = xb[pick]
        xt = l2_normalize(xb)
        try:
            self.index.train(xt)
        except RuntimeError as exc:
            msg = str(exc).strip().splitlines()[-1]
            hint = "use more data or a smaller index"
            raise QueryError(f"cannot train {self.factory!r} on {n} vectors ({msg}); {hint}") from None
        return n

    def add(self, xb: np.ndarray, *, chunk: int = 65536, progress: Progress | None = None) -> None:
        """L2-normalise and add ``xb`` ``(n, d)``; ids continue from ``ntotal``.

        Args:
            xb: Database vectors.
            chunk: Vectors added per call (for the progress callback).
            progress: Called with ``(done, total)`` after each chunk.
        """
        xb = as_float_matrix(xb, d=self.d, what="database vectors")
        if self.mapped_from is not None:  # a memory-mapped index is read-only: read it into RAM first
            self.index = _read(self.mapped_from, faiss.read_index)
            self.mapped_from = None
            self.set_params(**self.params)
        if not self.index.is_trained:
            raise QueryError(f"the {self.factory!r} index must be trained before adding vectors; call train()")
        for start in range(0, xb.shape[0], chunk):
            self.index.add(l2_normalize(xb[start : start + chunk]))
            if progress is not None:
                progress(min(start + chunk, xb.shape[0]), xb.shape[0])

    def set_params(self, **params: float) -> None:
        """Set search parameters by name, e.g. ``efSearch=64`` (HNSW) or ``nprobe=16`` (IVF).

        Raises:
            QueryError: A parameter the index does not have.
        """
        ps = faiss.ParameterSpace()
        for name, value in params.items():
            if value is None:
                continue
            if name not in SEARCH_PARAMS:
                raise QueryError(f"unknown search parameter {name!r}; use one of {', '.join(SEARCH_PARAMS)}")
            try:
                ps.set_index_parameter(self.index, name, value)
            except RuntimeError:
                raise QueryError(f"the {self.factory!r} index has no {name} parameter") from None
            self.params[name] = value

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the ``k`` most cosine-similar vectors of each query.

        Args:
            xq: Queries ``(nq, d)`` (normalised here).
            k: Results per query.

        Returns:
            ``(D, I)``: cosine similarities ``(nq, k)`` in descending order and ids ``(nq, k)`` (-1 past ntotal);
            equal scores are ordered by id.
        """
        check_k(k)
        xq = l2_normalize(as_float_matrix(xq, d=self.d, what="queries"))
        D, I = self.index.search(xq, k)
        return sort_by_distance_then_id(D, I, descending=True)

    def reconstruct_all(self) -> np.ndarray:
        """The stored (normalised) vectors ``(ntotal, d)``; only for indexes that keep them (``Flat``, ``HNSW``)."""
        return self.index.reconstruct_n(0, self.ntotal)

    def nbytes(self) -> int:
        """Serialized size of the index in bytes."""
        return int(faiss.serialize_index(self.index).size)

    def save(self, path: str | Path) -> None:
        """Write the index with ``faiss.write_index`` (callers make it atomic)."""
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, *, factory: str, d: int, mmap: bool = False) -> FloatIndex:
        """Read an index written by :meth:`save`.

        Args:
            path: The index file.
            factory: Its factory string (from the manifest).
            d: Expected dimension.
            mmap: Memory-map the file read-only (``IO_FLAG_MMAP_IFC``: Flat and IVF codes stay on disk and are
                paged in by the OS) where FAISS supports it for this index type, else read it into RAM. A mapped
                index is read into RAM again by :meth:`add`.

        Raises:
            IndexBundleError: The file is missing, truncated or not a FAISS index of dimension ``d``.
        """
        index, mapped = read_maybe_mapped(path, faiss.read_index, mmap=mmap)
        if index.d != d:
            raise IndexBundleError(f"{path}: index dimension {index.d} does not match the manifest's {d}; rebuild")
        out = cls(d, factory, index=index)
        out.mapped_from = Path(path) if mapped else None
        return out

    def describe(self) -> dict[str, Any]:
        return {"factory": self.factory, "metric": "cosine", "ntotal": self.ntotal, "params": dict(self.params)}


def read_maybe_mapped(path: str | Path, reader: Callable[..., Any], *, mmap: bool) -> tuple[Any, bool]:
    """Read an index with ``reader``, memory-mapped when ``mmap`` and FAISS can map this index type.

    Returns:
        ``(index, mapped)``.
    """
    for flags in MMAP_FLAGS if mmap else ():
        try:
            return _read(path, partial(_read_with_flags, reader, flags)), True
        except IndexBundleError:
            pass  # an index type FAISS cannot map (or a bad file: the plain read below names the problem)
    return _read(path, reader), False


def _read_with_flags(reader: Callable[..., Any], flags: int, path: str) -> Any:
    return reader(path, flags)


def _read(path: str | Path, reader: Callable[[str], Any]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise IndexBundleError(f"index file not found: {path}; rebuild the bundle with `dscmr index build`")
    try:
        return reader(str(path))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1][:200]
        raise IndexBundleError(f"{path} is truncated or not a FAISS index ({msg}); rebuild the bundle") from None
