"""Hybrid retrieval: a Hamming shortlist from the binary index, re-ranked by exact cosine on the float vectors.

The binary scan is cheap (8 bytes per item at 64 bits); only the k' shortlisted rows of the float vectors are
touched, so the vectors can stay memory-mapped on disk.
"""

from __future__ import annotations

import faiss
import numpy as np

from dscmr.errors import QueryError
from dscmr.indexing.arrays import as_float_matrix, check_k, l2_normalize
from dscmr.indexing.binary_index import BinaryIndex

SHORTLIST_FACTOR = 10


def rerank(xq: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids by exact cosine.

    FAISS scores each query against its own candidate rows in place (``fvec_inner_products_by_idx``), without
    gathering them into a copy: 0.43 against 0.64 ms for 4000 candidates of 1M x 128 vectors. Only the top k are
    then sorted.

    Args:
        xq: Queries ``(nq, d)`` (normalised here).
        candidates: Candidate ids ``(nq, k')``, -1 for none.
        vectors: L2-normalised database vectors ``(n, d)`` (an array or a read-only memmap), float32 C-contiguous.
        k: Results per query.

    Returns:
        ``(D, I)``: cosine similarities ``(nq, k)`` descending and ids, equal scores ordered by id; rows are padded
        with ``-inf`` / -1 when the shortlist had fewer than k ids.

    Raises:
        QueryError: A candidate id outside the vectors (the shortlist and the vectors disagree).
    """
    xq = l2_normalize(as_float_matrix(xq, d=vectors.shape[1], what="queries"))
    cand = np.ascontiguousarray(candidates, dtype=np.int64)
    if cand.ndim != 2 or cand.shape[0] != xq.shape[0]:
        raise QueryError(f"candidates {cand.shape} must be (nq, k') with nq = {xq.shape[0]}")
    if cand.size and int(cand.max()) >= vectors.shape[0]:
        raise QueryError(
            f"candidate id {int(cand.max())} is outside the {vectors.shape[0]} vectors; rebuild the bundle"
        )
    if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    nq, kp = cand.shape
    scores = np.empty((nq, kp), dtype=np.float32)
    safe = np.maximum(cand, 0)  # -1 (no candidate) is scored on row 0, then masked
    faiss.fvec_inner_products_by_idx(  # type: ignore[attr-defined]
        faiss.swig_ptr(scores), faiss.swig_ptr(xq), faiss.swig_ptr(vectors), faiss.swig_ptr(safe),
        vectors.shape[1], nq, kp,
    )  # fmt: skip
    D = np.full((nq, k), -np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    for q in range(nq):
        valid = cand[q] >= 0
        ids, sc = cand[q][valid], scores[q][valid]
        if ids.size > k:  # keep every candidate scoring at least the k-th best, so ties stay id-ordered
            kth = np.partition(sc, ids.size - k)[ids.size - k]
            keep = sc >= kth
            ids, sc = ids[keep], sc[keep]
        order = np.lexsort((ids, -sc))[:k]
        D[q, : order.size] = sc[order]
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
    cand = binary.shortlist(codes_q, min(kp, max(binary.ntotal, 1)))
    return rerank(xq, cand, vectors, k)
