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

from collections.abc import Iterator
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
    rel = torch.gather(relevant, 1, order).to(torch.float64)  # (q, k)
    hits = rel.cumsum(dim=1)  # (q, k)
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    precision_sum = (hits / ranks * rel).sum(dim=1)  # (q,)
    n_rel = hits[:, -1] if k > 0 else torch.zeros(scores.shape[0], dtype=torch.float64)
    return torch.where(n_rel > 0, precision_sum / n_rel.clamp_min(1), torch.zeros_like(precision_sum))


def _chunks(nq: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, nq, max(1, chunk_size)):
        yield slice(start, min(nq, start + chunk_size))


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
    xq_t, xb_t = _as_tensor(xq), _as_tensor(xb)
    lq, lb = _as_tensor(labels_q), _as_tensor(labels_b)
    if xq_t.ndim != 2 or xb_t.ndim != 2 or xq_t.shape[1] != xb_t.shape[1]:
        raise ValueError(f"queries {tuple(xq_t.shape)} and database {tuple(xb_t.shape)} must be (n, d) with equal d")
    if lq.shape[0] != xq_t.shape[0] or lb.shape[0] != xb_t.shape[0]:
        raise ValueError("labels must have one row per query / database item")
    out = np.empty(xq_t.shape[0], dtype=np.float64)
    with torch.no_grad():
        for sl in _chunks(xq_t.shape[0], chunk_size):
            scores = _scores(xq_t[sl], xb_t, metric)  # (c, nb)
            relevant = (lq[sl] @ lb.t()) > 0  # (c, nb)
            out[sl] = average_precision_from_scores(scores, relevant, k=k).numpy()
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
    xq_t, xb_t, lq, lb = _as_tensor(xq), _as_tensor(xb), _as_tensor(labels_q), _as_tensor(labels_b)
    k = min(k, xb_t.shape[0])
    total = 0.0
    with torch.no_grad():
        for sl in _chunks(xq_t.shape[0], chunk_size):
            scores = _scores(xq_t[sl], xb_t, metric)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            rel = torch.gather((lq[sl] @ lb.t()) > 0, 1, order)
            total += float(rel.to(torch.float64).mean(dim=1).sum())
    return total / max(1, xq_t.shape[0])


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
    xq_t, xb_t, lq, lb = _as_tensor(xq), _as_tensor(xb), _as_tensor(labels_q), _as_tensor(labels_b)
    nb = xb_t.shape[0]
    ranks = np.unique(np.linspace(1, nb, num=max(2, points)).round().astype(np.int64))
    idx = torch.as_tensor(ranks - 1)
    prec_sum = np.zeros(len(ranks))
    rec_sum = np.zeros(len(ranks))
    with torch.no_grad():
        for sl in _chunks(xq_t.shape[0], chunk_size):
            scores = _scores(xq_t[sl], xb_t, metric)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices
            rel = torch.gather((lq[sl] @ lb.t()) > 0, 1, order).to(torch.float64)
            hits = rel.cumsum(dim=1)[:, idx]  # (c, points)
            n_rel = rel.sum(dim=1, keepdim=True).clamp_min(1)
            prec_sum += (hits / torch.as_tensor(ranks, dtype=torch.float64)).sum(dim=0).numpy()
            rec_sum += (hits / n_rel).sum(dim=0).numpy()
    nq = max(1, xq_t.shape[0])
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
