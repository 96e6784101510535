"""Hybrid retrieval: a Hamming shortlist from the binary index, re-ranked by exact cosine on the float vectors.

The binary scan is cheap (8 bytes per item at 64 bits); only the k' shortlisted rows of the float vectors are
touched, so the vectors can stay memory-mapped on disk.
"""

from __future__ import annotations

import numpy as np

from dscmr.errors import QueryError
from indexing._checks import as_float_matrix, check_k, l2_normalize
from indexing.binary_index import BinaryIndex

SHORTLIST_FACTOR = 10


def rerank(
    xq: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int, *, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids by exact cosine.

    Args:
        xq: Queries ``(nq, d)`` (normalised here).
        candidates: Candidate ids ``(nq, k')``, -1 for none.
        vectors: L2-normalised database vectors ``(n, d)`` (an array or a read-only memmap).
        k: Results per query.
        chunk: Queries gathered at once (bounds memory at ``chunk * k' * d`` floats).

    Returns:
        ``(D, I)``: cosine similarities ``(nq, k)`` descending and ids, equal scores ordered by id; rows are padded
        with ``-inf`` / -1 when the shortlist had fewer than k ids.
    """
    xq = l2_normalize(as_float_matrix(xq, d=vectors.shape[1], what="queries"))
    nq, kp = candidates.shape
    D = np.full((nq, k), -np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    for start in range(0, nq, chunk):
        cand = candidates[start : start + chunk]  # (c, k')
        valid = cand >= 0
        gathered = np.asarray(vectors[np.where(valid, cand, 0).ravel()]).reshape(*cand.shape, -1)  # (c, k', d)
        scores = np.einsum("ckd,cd->ck", gathered, xq[start : start + chunk])  # (c, k')
        scores = np.where(valid, scores, -np.inf)
        ids = np.where(valid, cand, np.iinfo(np.int64).max)
        order = np.lexsort((ids, -scores), axis=-1)[:, :k]  # (c, min(k, k'))
        m = order.shape[1]
        D[start : start + chunk, :m] = np.take_along_axis(scores, order, axis=1)
        I[start : start + chunk, :m] = np.where(
            np.isfinite(D[start : start + chunk, :m]), np.take_along_axis(cand, order, axis=1), -1
        )
    return D, I


def hybrid_search(
    binary: BinaryIndex,
    vectors: np.ndarray,
    codes_q: np.ndarray,
    xq: np.ndarray,
    k: int,
    *,
    shortlist: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hamming shortlist of ``shortlist`` ids (default ``10 * k``), then exact cosine re-ranking to ``k``.

    Args:
        binary: Index of the database codes.
        vectors: L2-normalised database vectors, row i = id i.
        codes_q: Packed query codes ``(nq, B / 8)``.
        xq: Query embeddings ``(nq, d)``.
        k: Results per query.
        shortlist: k', the Hamming shortlist length (at least k).

    Returns:
        ``(D, I)`` as :func:`rerank`.
    """
    check_k(k)
    kp = SHORTLIST_FACTOR * k if shortlist is None else int(shortlist)
    if kp < k:
        raise QueryError(f"the shortlist ({kp}) must be at least k ({k})")
    if vectors.shape[0] != binary.ntotal:
        raise QueryError(f"{vectors.shape[0]} float vectors for {binary.ntotal} codes; rebuild the bundle")
    _, cand = binary.search(codes_q, min(kp, max(binary.ntotal, 1)))
    return rerank(xq, cand, vectors, k)
