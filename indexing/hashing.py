"""Binary codes from common-space embeddings: ``sign``, ``itq`` and ``learned`` hashing.

Every method is a linear hasher, so one small class applies all three and saves them the same way::

    y = x / ||x||                    (sign, itq: codes follow the cosine geometry the float index uses)
    y = y - mean                     (sign, itq: mean of the training vectors, stored with the bundle)
    y = y / ||y||                    (itq only: faiss.ITQTransform works on centred, normalised vectors)
    z = y @ A.T + b                  (B projections)
    code = z > 0                     (bit i is 1 when z_i > 0), packed with np.packbits

- ``sign``: the sign of the mean-centred embedding. With B == d, A is the identity; otherwise A is a seeded
  random orthonormal projection (sign random projections, the classic LSH for cosine).
- ``itq``: iterative quantization (Gong & Lazebnik, 2011): PCA to B dimensions (``faiss.PCAMatrix``), then the
  rotation R that minimises ``||sign(V R) - V R||^2``. PCA cannot output more dimensions than it receives, so for
  **B > d** the centred vectors are instead embedded in R^B by a seeded random matrix with orthonormal columns
  (an isometry), and ITQ learns a B x B rotation there (the data spans only d of the B dimensions, so the extra
  bits add redundancy rather than information).
- ``learned``: the run's trained hash layer, ``sign(tanh(W u + b)) = sign(W u + b)`` on the raw embedding u.

Bit layout: ``np.packbits`` big-endian within each byte (bit 0 of the code is the 0x80 bit of byte 0); FAISS's
Hamming distance is a popcount over bytes, so it does not depend on the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dscmr.errors import DataError, IndexBundleError, QueryError, UsageError
from dscmr.indexing.arrays import as_float_matrix, check_bits, l2_normalize

HASH_METHODS = ("sign", "itq", "learned")


def pack_codes(bits: np.ndarray) -> np.ndarray:
    """Pack a ``(n, B)`` boolean (or 0/1, or +-1 with positive = 1) matrix into ``(n, B // 8)`` uint8."""
    b = np.asarray(bits)
    if b.ndim != 2:
        raise QueryError(f"bit matrix must be (n, B), got shape {b.shape}")
    check_bits(b.shape[1])
    return np.ascontiguousarray(np.packbits(b > 0, axis=1))


def unpack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(n, B)`` uint8 0/1."""
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=bits)


def hamming_distances(codes_q: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """Exact Hamming distances between packed codes, ``(nq, nb)`` int32 (a small reference, not for big nb)."""
    x = np.bitwise_xor(codes_q[:, None, :], codes_b[None, :, :])  # (nq, nb, B/8)
    return np.unpackbits(x, axis=2).sum(axis=2, dtype=np.int32)


def quantization_error(z: np.ndarray) -> float:
    """Mean ``||sign(z) - z||^2`` per row: what ITQ minimises."""
    return float(((np.where(z > 0, 1.0, -1.0) - z) ** 2).sum(axis=1).mean())


def _orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    """A seeded ``(rows, cols)`` matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))  # Haar-distributed
    return q if rows >= cols else q.T


@dataclass(frozen=True)
class LinearHasher:
    """``code = pack(A @ prep(x) + b > 0)``; see the module docstring for ``prep``.

    Attributes:
        method: ``sign``, ``itq`` or ``learned``.
        bits: Code length B (a multiple of 8).
        A: Projection ``(B, d)`` float32.
        b: Offset ``(B,)`` float32.
        mean: Mean subtracted after input normalisation, ``(d,)``; None for ``learned``.
        normalize_input: L2-normalise x first.
        normalize_centred: L2-normalise after centring (ITQ).
    """

    method: str
    bits: int
    A: np.ndarray
    b: np.ndarray
    mean: np.ndarray | None
    normalize_input: bool = True
    normalize_centred: bool = False

    @property
    def d(self) -> int:
        return int(self.A.shape[1])

    def project(self, x: np.ndarray) -> np.ndarray:
        """Real-valued projections ``z`` ``(n, B)`` whose signs are the bits."""
        y = as_float_matrix(x, d=self.d, what="embeddings")
        if self.normalize_input:
            y = l2_normalize(y)
        if self.mean is not None:
            y = y - self.mean
        if self.normalize_centred:
            y = l2_normalize(y)
        return np.ascontiguousarray(y @ self.A.T + self.b, dtype=np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed codes ``(n, B // 8)`` uint8 of embeddings ``x`` ``(n, d)``."""
        return pack_codes(self.project(x) > 0)

    def save(self, path: str | Path) -> None:
        """Write the hasher as an ``.npz`` of plain arrays (loaded with ``allow_pickle=False``)."""
        arrays: dict[str, Any] = {
            "method": np.array(self.method),
            "bits": np.array(self.bits),
            "A": self.A,
            "b": self.b,
            "flags": np.array([self.normalize_input, self.normalize_centred]),
        }
        if self.mean is not None:
            arrays["mean"] = self.mean
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> LinearHasher:
        """Read a hasher written by :meth:`save`.

        Raises:
            IndexBundleError: Missing or corrupt file.
        """
        path = Path(path)
        if not path.is_file():
            raise IndexBundleError(f"hasher file not found: {path}; rebuild the bundle")
        try:
            with np.load(path, allow_pickle=False) as z:
                flags = z["flags"]
                return cls(
                    method=str(z["method"]),
                    bits=int(z["bits"]),
                    A=z["A"].astype(np.float32),
                    b=z["b"].astype(np.float32),
                    mean=z["mean"].astype(np.float32) if "mean" in z.files else None,
                    normalize_input=bool(flags[0]),
                    normalize_centred=bool(flags[1]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise IndexBundleError(f"{path} is truncated or not a hasher file ({exc}); rebuild the bundle") from None


def fit_sign(xb: np.ndarray, bits: int, *, seed: int = 0) -> LinearHasher:
    """Sign hashing: the mean of the normalised training vectors, and a projection when ``bits != d``."""
    check_bits(bits)
    x = l2_normalize(as_float_matrix(xb, what="training embeddings"))
    d = x.shape[1]
    A = np.eye(d, dtype=np.float32) if bits == d else _orthonormal(bits, d, seed).astype(np.float32)
    return LinearHasher("sign", bits, A, np.zeros(bits, np.float32), x.mean(axis=0).astype(np.float32))


def itq_rotation(v: np.ndarray, *, iterations: int = 50, seed: int = 0) -> np.ndarray:
    """The ITQ rotation R ``(B, B)`` minimising ``||sign(v R) - v R||^2`` by alternating Procrustes steps.

    Args:
        v: Zero-centred projected data ``(n, B)``.
        iterations: Alternations (Gong & Lazebnik use 50).
        seed: Seed of the random initial rotation.
    """
    v64 = np.asarray(v, dtype=np.float64)
    R = _orthonormal(v64.shape[1], v64.shape[1], seed)
    for _ in range(iterations):
        codes = np.where(v64 @ R >= 0, 1.0, -1.0)  # (n, B): fix R, the best codes are the signs
        U, _, Vt = np.linalg.svd(v64.T @ codes)  # fix the codes, the best rotation is U Vt (orthogonal Procrustes)
        R = U @ Vt
    return R


def fit_itq(
    xb: np.ndarray, bits: int, *, seed: int = 0, iterations: int = 50, max_train: int = 100_000
) -> LinearHasher:
    """ITQ: centre, normalise, PCA to B dimensions with ``faiss.PCAMatrix``, then the learned ITQ rotation.

    The rotation is fitted here in numpy, not with ``faiss.ITQMatrix``: on our data FAISS 1.15's ITQMatrix left
    the quantization error at the level of a random rotation (measured, see docs/indexing.md), while the
    alternating Procrustes iterations of the paper reduce it clearly.

    Args:
        xb: Training embeddings ``(n, d)``; n should be well above B.
        bits: Code length B (B > d: see the module docstring).
        seed: Seed of the initial rotation and of the B > d embedding.
        iterations: ITQ alternations.
        max_train: At most this many (seeded, sampled) vectors are used.
    """
    check_bits(bits)
    x = l2_normalize(as_float_matrix(xb, what="training embeddings"))
    n, d = x.shape
    if n < 2:
        raise DataError(f"ITQ needs at least 2 training vectors, got {n}")
    if n > max_train:
        x = x[np.sort(np.random.default_rng(seed).choice(n, size=max_train, replace=False))]
    mean = x.mean(axis=0).astype(np.float32)
    y = l2_normalize(x - mean)  # (n, d)
    if bits <= d:
        pca = faiss.PCAMatrix(d, bits)
        pca.train(y)
        P = faiss.vector_to_array(pca.A).reshape(bits, d).astype(np.float64)  # (B, d) leading components
        pb = faiss.vector_to_array(pca.b).astype(np.float64)  # (B,), -P @ mean (~0: y is centred)
    else:
        P = _orthonormal(bits, d, seed + 1)  # (B, d), orthonormal columns: an isometric embedding of R^d in R^B
        pb = np.zeros(bits)
    v = y.astype(np.float64) @ P.T + pb  # (n, B)
    R = itq_rotation(v, iterations=iterations, seed=seed)
    # z = (y P^T + pb) R = y (R^T P)^T + pb R
    A = (R.T @ P).astype(np.float32)
    b = (pb @ R).astype(np.float32)
    return LinearHasher("itq", bits, A, b, mean, normalize_input=True, normalize_centred=True)


def hamming_codes(hasher: LinearHasher, x: Any) -> np.ndarray:
    """The +-1 codes ``(n, B)`` float32 of embeddings ``x`` ``(n, d)``: +1 where the projection is > 0.

    The one way codes are made for Hamming mAP (``cross_modal_map(..., metric="hamming")``): the same bits as
    :meth:`LinearHasher.encode` packs for the binary index, so evaluation and search rank alike.
    """
    return np.where(hasher.project(np.asarray(x, dtype=np.float32)) > 0, 1.0, -1.0).astype(np.float32)


def learned_hasher(weight: np.ndarray, bias: np.ndarray | None) -> LinearHasher:
    """The hasher of a trained hash layer ``tanh(W u + b)``: ``W`` ``(B, d)``, ``b`` ``(B,)``."""
    W = np.ascontiguousarray(weight, dtype=np.float32)
    check_bits(W.shape[0])
    b = np.zeros(W.shape[0], np.float32) if bias is None else np.asarray(bias, dtype=np.float32)
    return LinearHasher("learned", W.shape[0], W, b, None, normalize_input=False)


def fit_hasher(method: str, xb: np.ndarray, bits: int, *, seed: int = 0) -> LinearHasher:
    """Fit ``sign`` or ``itq`` on training embeddings (``learned`` comes from a run: :func:`learned_hasher`)."""
    if method == "sign":
        return fit_sign(xb, bits, seed=seed)
    if method == "itq":
        return fit_itq(xb, bits, seed=seed)
    if method == "learned":
        raise UsageError("learned codes come from the run's hash layer; use learned_hasher(W, b)")
    raise UsageError(f"unknown hash method {method!r}; use one of {', '.join(HASH_METHODS)}")
