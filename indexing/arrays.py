"""Boundary checks shared by the index wrappers: float32 ``(n, d)`` matrices and packed uint8 codes."""

from __future__ import annotations

import numpy as np

from dscmr.errors import QueryError


def as_float_matrix(x: object, *, d: int | None = None, what: str = "vectors") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``(n, d)`` matrix with finite values.

    A 1-D vector is treated as one row. Copies only when the dtype or layout has to change.

    Args:
        x: Array-like input.
        d: Required number of columns (None accepts any).
        what: Name used in error messages.

    Raises:
        QueryError: Wrong rank, wrong width, or NaN/Inf values.
    """
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise QueryError(f"{what} must be a (n, d) matrix, got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise QueryError(f"{what} have dimension {arr.shape[1]}, the index expects {d}; encode with the same model")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise QueryError(f"{what} contain NaN or Inf; check the encoder output")
    return arr


def as_codes(x: object, *, bits: int | None = None, what: str = "codes") -> np.ndarray:
    """Return packed binary codes as a C-contiguous uint8 ``(n, bits // 8)`` matrix.

    Raises:
        QueryError: Not uint8, wrong rank or width, or ``bits`` not a multiple of 8.
    """
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise QueryError(f"{what} must be packed uint8 (n, bits / 8), got {arr.dtype} {arr.shape}; use pack_codes")
    if bits is not None:
        check_bits(bits)
        if arr.shape[1] * 8 != bits:
            raise QueryError(f"{what} hold {arr.shape[1] * 8} bits, the index expects {bits}")
    return np.ascontiguousarray(arr)


def check_bits(bits: int) -> int:
    """Check a code length: a positive multiple of 8."""
    if bits <= 0 or bits % 8:
        raise QueryError(f"bits must be a positive multiple of 8 (16, 32, 64, 128, ...), got {bits}")
    return bits


def check_k(k: int) -> int:
    """Check a result count: a positive whole number (of any size; searches cap it at the index size).

    Raises:
        QueryError: Not a whole number, or not positive.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise QueryError(f"k must be a whole number of results, got {k!r}")
    if k <= 0:
        raise QueryError(f"k must be a positive number of results, got {k}")
    return int(k)


def parse_k(text: str | int) -> int:
    """A result count from a command-line string (``"10"``); ``"1e30"``, ``"2.5"`` or ``"ten"`` are refused.

    Raises:
        QueryError: Not a positive whole number.
    """
    if isinstance(text, str):
        t = text.strip()
        if not t.lstrip("+-").isdigit() or not t.isascii():
            raise QueryError(f"k must be a whole number of results, got {text!r}")
        return check_k(int(t))
    return check_k(text)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (float32, zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def sort_by_distance_then_id(
    D: np.ndarray, I: np.ndarray, *, descending: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Re-sort each row of a ``(D, I)`` result by (distance, id), or (-score, id) when ``descending``.

    Missing results (``I == -1``) go last.
    """
    key = -D if descending else D
    key = np.where(I < 0, np.inf, key.astype(np.float64))
    ids = np.where(I < 0, np.iinfo(np.int64).max, I)
    order = np.lexsort((ids, key), axis=-1)
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
