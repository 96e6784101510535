"""Retrieval metrics: mAP@all, mAP@k, precision@k and precision-recall curves.

Relevance: a database item is relevant to a query when they share at least one label (multi-hot labels).

Everything is vectorised and processed in chunks of queries, so memory stays at ``O(chunk_size * n_db)`` however
many queries there are (100k x 100k fits in a few hundred MB with the default chunk). Ranking is by descending
score with ties broken by database index (a stable sort), so results are deterministic.

Definitions (per query, ranking the database by score):

- ``AP@k = (1 / R_k) * sum_{i <= k} P(i) * rel(i)``, with ``R_k`` the number of relevant items in the top k and
  ``P(i)`` the precision at rank i (the convention of the DSCMR and most cross-modal retrieval papers); ``k = 0``
  means the whole database, where this is the standard average precision. A query with no relevant item in the
  top k scores 0.
- ``P@k``: the fraction of relevant items in the top k.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("cosine", "inner_product", "hamming")


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.float() if not t.is_floating_point() else t.to(torch.float32)


def _scores(xq: torch.Tensor, xb: torch.Tensor, metric: str) -> torch.Tensor:
    """Similarity (higher is better) between query rows and database rows, ``(nq, nb)``."""
    if metric == "cosine":
        return torch.nn.functional.normalize(xq, dim=1) @ torch.nn.functional.normalize(xb, dim=1).t()
    if metric == "inner_product":
        return xq @ xb.t()
    if metric == "hamming":
        # For +-1 codes, <a, b> = B - 2 * hamming(a, b): ranking by inner product is ranking by Hamming distance.
        return torch.sign(xq) @ torch.sign(xb).t()
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")


def average_precision_from_scores(scores: torch.Tensor, relevant: torch.Tensor, *, k: int = 0) -> torch.Tensor:
    """AP@k of each query row given its scores and relevance over the database.

    Args:
        scores: ``(q, n)`` similarities, higher first.
        relevant: ``(q, n)`` booleans.
        k: Cut-off (0 = all).

    Returns:
        ``(q,)`` float64 average precisions.
    """
    n = scores.shape[1]
    k = n if k <= 0 or k > n else k
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # (q, k)
    return _average_precision_ranked(torch.gather(relevant, 1, order))


def _chunks(nq: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, nq, max(1, chunk_size)):
        yield slice(start, min(nq, start + chunk_size))


def _chunk_scores(
    xq: np.ndarray | torch.Tensor,
    xb: np.ndarray | torch.Tensor,
    labels_q: np.ndarray | torch.Tensor,
    labels_b: np.ndarray | torch.Tensor,
    *,
    metric: str,
    chunk_size: int,
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """For each chunk of queries: ``(rows, scores (c, nb), relevant (c, nb) bool)``, inputs checked once."""
    xq_t, xb_t = _as_tensor(xq), _as_tensor(xb)
    lq, lb = _as_tensor(labels_q), _as_tensor(labels_b)
    if xq_t.ndim != 2 or xb_t.ndim != 2 or xq_t.shape[1] != xb_t.shape[1]:
        raise ValueError(f"queries {tuple(xq_t.shape)} and database {tuple(xb_t.shape)} must be (n, d) with equal d")
    if lq.shape[0] != xq_t.shape[0] or lb.shape[0] != xb_t.shape[0]:
        raise ValueError("labels must have one row per query / database item")
    with torch.no_grad():
        for sl in _chunks(xq_t.shape[0], chunk_size):
            yield sl, _scores(xq_t[sl], xb_t, metric), (lq[sl] @ lb.t()) > 0


def _ranked_relevance(
    xq: np.ndarray | torch.Tensor,
    xb: np.ndarray | torch.Tensor,
    labels_q: np.ndarray | torch.Tensor,
    labels_b: np.ndarray | torch.Tensor,
    *,
    metric: str,
    chunk_size: int,
    k: int = 0,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """For each chunk of queries: ``(rows, rel)`` with ``rel`` ``(c, k)`` booleans in rank order (k = 0: all)."""
    for sl, scores, relevant in _chunk_scores(xq, xb, labels_q, labels_b, metric=metric, chunk_size=chunk_size):
        nb = scores.shape[1]
        kk = nb if k <= 0 or k > nb else k
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kk]  # (c, k)
        yield sl, torch.gather(relevant, 1, order)  # (c, k)


def _average_precision_all_by_counting(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """AP@all without an argsort, exact and equal to the stable-sort definition.

    With distinct scores in a row, the p-th best relevant item (p = 1..R) sits at overall rank
    ``1 + #{items with a higher score}``, found by binary search in the row's sorted scores; then
    ``AP = (1/R) sum_p p / rank_p``. Two value-only sorts (SIMD in numpy) replace the much slower argsort.
    Rows with tied scores are recomputed with the stable sort, where ties are broken by database index.

    Args:
        scores: ``(q, n)`` float scores.
        relevant: ``(q, n)`` booleans.

    Returns:
        ``(q,)`` float64 average precisions.
    """
    s = np.ascontiguousarray(scores.numpy(), dtype=np.float32)
    rel = relevant.numpy()
    q, n = s.shape
    all_sorted = np.sort(s, axis=1)  # (q, n) ascending
    n_rel = rel.sum(axis=1)  # (q,)
    rmax = int(n_rel.max()) if q else 0
    out = torch.zeros(q, dtype=torch.float64)
    if rmax == 0 or n == 0:
        return out
    rows, cols = np.nonzero(rel)  # row-major: each row's relevant items are contiguous
    starts = np.concatenate(([0], np.cumsum(n_rel)[:-1]))
    neg_rel = np.full((q, rmax), np.inf, dtype=np.float32)  # (q, rmax) compact, padded to sort last
    neg_rel[rows, np.arange(rows.size) - starts[rows]] = -s[rows, cols]
    rel_desc = -np.sort(neg_rel, axis=1)  # (q, rmax) relevant scores, best first (-inf padding)
    higher = n - torch.searchsorted(torch.from_numpy(all_sorted), torch.from_numpy(rel_desc), right=True)
    p = torch.arange(1, rmax + 1, dtype=torch.float64)  # (rmax,)
    valid = p[None, :] <= torch.from_numpy(n_rel)[:, None]  # (q, rmax)
    contrib = torch.where(valid, p / (higher.to(torch.float64) + 1), torch.zeros((), dtype=torch.float64))
    out = contrib.sum(dim=1) / torch.from_numpy(np.maximum(n_rel, 1)).to(torch.float64)
    tied = np.flatnonzero((all_sorted[:, 1:] == all_sorted[:, :-1]).any(axis=1))
    if tied.size:
        t = torch.from_numpy(tied)
        out[t] = average_precision_from_scores(scores[t], relevant[t])
    return out


def _average_precision_ranked(rel: torch.Tensor) -> torch.Tensor:
    """AP@k of each row of ranked relevance ``rel`` ``(q, k)``; rows without a hit score 0. Returns ``(q,)``."""
    relf = rel.to(torch.float64)
    hits = relf.cumsum(dim=1)  # (q, k)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    precision_sum = (hits / ranks * relf).sum(dim=1)  # (q,)
    n_rel = hits[:, -1] if rel.shape[1] else torch.zeros(rel.shape[0], dtype=torch.float64)
    return torch.where(n_rel > 0, precision_sum / n_rel.clamp_min(1), torch.zeros_like(precision_sum))


def average_precisions(
    xq: np.ndarray | torch.Tensor,
    xb: np.ndarray | torch.Tensor,
    labels_q: np.ndarray | torch.Tensor,
    labels_b: np.ndarray | torch.Tensor,
    *,
    k: int = 0,
    metric: str = "cosine",
    chunk_size: int = 1024,
) -> np.ndarray:
    """Per-query AP@k, ``(nq,)``, ranking ``xb`` for each row of ``xq`` (see module docstring)."""
    out = np.empty(len(xq), dtype=np.float64)
    if k <= 0 or k >= len(xb):  # mAP@all: rank by counting, no argsort
        # numpy's sorts release the GIL: score chunks in this thread, count them in up to torch's thread count of
        # workers, with at most that many chunks in flight so memory stays bounded.
        workers = max(1, torch.get_num_threads())
        chunks = _chunk_scores(xq, xb, labels_q, labels_b, metric=metric, chunk_size=chunk_size)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque[tuple[slice, Future[torch.Tensor]]] = deque()
            for sl, scores, relevant in chunks:
                pending.append((sl, pool.submit(_average_precision_all_by_counting, scores, relevant)))
                while len(pending) >= workers:
                    done_sl, fut = pending.popleft()
                    out[done_sl] = fut.result().numpy()
            for done_sl, fut in pending:
                out[done_sl] = fut.result().numpy()
        return out
    for sl, rel in _ranked_relevance(xq, xb, labels_q, labels_b, metric=metric, chunk_size=chunk_size, k=k):
        out[sl] = _average_precision_ranked(rel).numpy()
    return out


def mean_average_precision(
    xq: np.ndarray | torch.Tensor,
    xb: np.ndarray | torch.Tensor,
    labels_q: np.ndarray | torch.Tensor,
    labels_b: np.ndarray | torch.Tensor,
    *,
    k: int = 0,
    metric: str = "cosine",
    chunk_size: int = 1024,
) -> float:
    """mAP@k (``k = 0``: mAP@all) of queries ``xq`` against database ``xb``.

    Args:
        xq: Query embeddings ``(nq, d)``.
        xb: Database embeddings ``(nb, d)``.
        labels_q: Multi-hot query labels ``(nq, C)``.
        labels_b: Multi-hot database labels ``(nb, C)``.
        k: Cut-off, 0 for all.
        metric: ``cosine``, ``inner_product`` or ``hamming`` (sign of the inputs, ranked by Hamming distance).
        chunk_size: Queries per chunk.
    """
    ap = average_precisions(xq, xb, labels_q, labels_b, k=k, metric=metric, chunk_size=chunk_size)
    return float(ap.mean()) if ap.size else 0.0


def precision_at_k(
    xq: np.ndarray | torch.Tensor,
    xb: np.ndarray | torch.Tensor,
    labels_q: np.ndarray | torch.Tensor,
    labels_b: np.ndarray | torch.Tensor,
    *,
    k: int,
    metric: str = "cosine",
    chunk_size: int = 1024,
) -> float:
    """Mean fraction of relevant items among the top ``k``."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    total, nq = 0.0, 0
    for _, rel in _ranked_relevance(xq, xb, labels_q, labels_b, metric=metric, chunk_size=chunk_size, k=k):
        total += float(rel.to(torch.float64).mean(dim=1).sum())
        nq += rel.shape[0]
    return total / max(1, nq)


@dataclass(frozen=True)
class PRCurve:
    """Mean precision and recall at a set of cut-off ranks."""

    ranks: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "ranks": self.ranks.tolist(),
            "precision": self.precision.tolist(),
            "recall": self.recall.tolist(),
        }


def pr_curve(
    xq: np.ndarray | torch.Tensor,
    xb: np.ndarray | torch.Tensor,
    labels_q: np.ndarray | torch.Tensor,
    labels_b: np.ndarray | torch.Tensor,
    *,
    points: int = 20,
    metric: str = "cosine",
    chunk_size: int = 1024,
) -> PRCurve:
    """Precision and recall averaged over queries at ``points`` evenly spaced cut-off ranks."""
    nb = len(xb)
    ranks = np.unique(np.linspace(1, nb, num=max(2, points)).round().astype(np.int64))
    idx = torch.as_tensor(ranks - 1)
    prec_sum = np.zeros(len(ranks))
    rec_sum = np.zeros(len(ranks))
    nq = 0
    for _, rel in _ranked_relevance(xq, xb, labels_q, labels_b, metric=metric, chunk_size=chunk_size):
        relf = rel.to(torch.float64)  # (c, nb)
        hits = relf.cumsum(dim=1)[:, idx]  # (c, points)
        n_rel = relf.sum(dim=1, keepdim=True).clamp_min(1)
        prec_sum += (hits / torch.as_tensor(ranks, dtype=torch.float64)).sum(dim=0).numpy()
        rec_sum += (hits / n_rel).sum(dim=0).numpy()
        nq += rel.shape[0]
    nq = max(1, nq)
    return PRCurve(ranks, prec_sum / nq, rec_sum / nq)


def cross_modal_map(
    img: np.ndarray | torch.Tensor,
    txt: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    k: int = 0,
    metric: str = "cosine",
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Both retrieval directions on one split: image queries against texts and text queries against images.

    Returns:
        ``{"img2txt": mAP, "txt2img": mAP, "avg": mean of the two}``.
    """
    i2t = mean_average_precision(img, txt, labels, labels, k=k, metric=metric, chunk_size=chunk_size)
    t2i = mean_average_precision(txt, img, labels, labels, k=k, metric=metric, chunk_size=chunk_size)
    return {"img2txt": i2t, "txt2img": t2i, "avg": (i2t + t2i) / 2}
