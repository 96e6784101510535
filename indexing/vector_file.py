"""Rows of a bundle's ``vectors.npy`` read by positional reads, for re-ranking a short list without mapping the file.

Re-ranking touches k' scattered rows per query. Read through a memory map, each touch maps the page and, by the
kernel's fault-around, up to 15 neighbouring cached pages into the process: at 1M x 128 vectors, 100,000 scattered
rows added 491 MB of RSS, the whole 512 MB file (``madvise(MADV_RANDOM)`` does not stop it). ``os.pread`` copies
just the rows asked for; the file's pages stay in the page cache, which the kernel can reclaim, and the process's
RSS does not grow with the queries.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dscmr.errors import IndexBundleError


class VectorFile:
    """A float32 ``(n, d)`` ``.npy`` matrix whose rows are read on demand (:meth:`take`).

    The file descriptor is opened once, so a writer renaming a new ``vectors.npy`` into place does not change what
    an open bundle reads.

    Attributes:
        path: The file.
        shape: ``(n, d)``.
    """

    def __init__(self, path: str | Path) -> None:
        """Open ``path`` and read its ``.npy`` header.

        Raises:
            IndexBundleError: Not a float32 2-D C-order ``.npy`` file, or shorter than its header says.
        """
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_RDONLY)
        try:
            self.shape, self._offset = _header(self._fd, self.path)
        except BaseException:
            self.close()
            raise
        self._row = self.shape[1] * 4

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (each in ``[0, n)``), float32 ``(len(ids), d)``, in the order given."""
        if self._fd is None:
            raise IndexBundleError(f"{self.path} is closed")
        ids = np.asarray(ids, dtype=np.int64).ravel()
        out = np.empty((ids.size, self.shape[1]), dtype=np.float32)
        flat = memoryview(out.data).cast("B")
        fd, row, base = self._fd, self._row, self._offset
        for j, i in enumerate(ids.tolist()):
            got = os.preadv(fd, [flat[j * row : (j + 1) * row]], base + i * row)
            if got != row:
                raise IndexBundleError(f"{self.path} ended before row {i}; rebuild the bundle")
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _header(fd: int, path: Path) -> tuple[tuple[int, int], int]:
    """``((n, d), offset of row 0)`` of the ``.npy`` file open on ``fd``."""
    with os.fdopen(os.dup(fd), "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
        except ValueError as exc:
            raise IndexBundleError(f"{path} is not a .npy matrix ({exc}); rebuild the bundle") from None
        offset = fh.tell()
        size = os.fstat(fh.fileno()).st_size
    if dtype != np.float32 or len(shape) != 2 or fortran:
        raise IndexBundleError(f"{path} holds {dtype} {shape}, not a float32 (n, d) matrix; rebuild the bundle")
    if size < offset + shape[0] * shape[1] * 4:
        raise IndexBundleError(f"{path} is shorter than its {shape} header says; rebuild the bundle")
    return (int(shape[0]), int(shape[1])), offset


__all__ = ["VectorFile"]
