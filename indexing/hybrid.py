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


def rerank(xq: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids by exact cosine.

    Candidates are gathered in increasing id order (near-sequential reads: 2x faster than shortlist order on
    200k x 128 vectors), scored exactly, and only the top k are sorted.

    Args:
        xq: Queries ``(nq, d)`` (normalised here).
        candidates: Candidate ids ``(nq, k')``, -1 for none.
        vectors: L2-normalised database vectors ``(n, d)`` (an array or a read-only memmap).
        k: Results per query.

    Returns:
        ``(D, I)``: cosine similarities ``(nq, k)`` descending and ids, equal scores ordered by id; rows are padded
        with ``-inf`` / -1 when the shortlist had fewer than k ids.
    """
    xq = l2_normalize(as_float_matrix(xq, d=vectors.shape[1], what="queries"))
    nq = candidates.shape[0]
    D = np.full((nq, k), -np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    for q in range(nq):
        ids = np.sort(candidates[q][candidates[q] >= 0])  # (k',) ascending
        if ids.size == 0:
            continue
        # einsum, not BLAS gemv: on a busy machine a threaded gemv of 4000 x 128 took 18 ms, einsum 0.1 ms
        scores = np.einsum("kd,d->k", np.take(vectors, ids, axis=0), xq[q])  # (k',)
        if ids.size > k:  # keep every candidate scoring at least the k-th best, so ties stay id-ordered
            kth = np.partition(scores, ids.size - k)[ids.size - k]
            keep = scores >= kth
            ids, scores = ids[keep], scores[keep]
        order = np.lexsort((ids, -scores))[:k]
        D[q, : order.size] = scores[order]
        I[q, : order.size] = ids[order]
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
