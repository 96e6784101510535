"""Retrieval metrics: mAP@all, mAP@k, precision@k and precision-recall curves.

Relevance: a database item is relevant to a query when they share at least one label (multi-hot labels).

Everything is vectorised and processed in chunks of queries, so memory stays bounded however many queries there
are (mAP@all caps a chunk at ``_MAX_CHUNK_ELEMENTS`` pairs per worker thread). Ranking is by descending score with
ties broken by database index (a stable sort), so results are deterministic.

Definitions (per query, ranking the database by score):

- ``AP@k = (1 / R_k) * sum_{i <= k} P(i) * rel(i)``, with ``R_k`` the number of relevant items in the top k and
  ``P(i)`` the precision at rank i (the convention of the DSCMR and most cross-modal retrieval papers); ``k = 0``
  means the whole database, where this is the standard average precision. A query with no relevant item in the
  top k scores 0.
- ``P@k``: the fraction of relevant items in the top k.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

METRICS = ("cosine", "inner_product", "hamming")
# mAP@all holds 20-40 bytes per (query, item) pair of a chunk at its peak (scores, relevance, keys and their
# temporaries); 2**22 pairs keep each worker under 200 MB whatever the database size (measured: 1024 x 100k on two
# workers peaked at 150 MB over the inputs).
_MAX_CHUNK_ELEMENTS = 1 << 22
# Above this many database items, float32 scores tie so often that the int64 keys (which carry the index) are used
# directly instead of int32 keys plus a second sort of the rows with mixed ties (see _average_precision_all_by_keys).
_INT32_KEYS_MAX_DB = 16384


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.float() if not t.is_floating_point() else t.to(torch.float32)


def _prepare(x: torch.Tensor, metric: str) -> np.ndarray:
    """Rows ready for an inner product: normalised (cosine), signs (hamming) or as they are; float32 C-contiguous.

    For +-1 codes, ``<a, b> = B - 2 * hamming(a, b)``: ranking by inner product is ranking by Hamming distance.
    """
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    elif metric == "hamming":
        x = torch.sign(x)
    elif metric != "inner_product":
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


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


@functools.cache
def _blas_threads() -> ThreadpoolController:
    """The process's thread pools, scanned once (a scan costs ~7 ms; limiting through it then costs ~0.04 ms)."""
    return ThreadpoolController()


def _chunks(nq: int, chunk_size: int) -> Iterator[slice]:
    for start in range(0, nq, max(1, chunk_size)):
        yield slice(start, min(nq, start + chunk_size))


@dataclass(frozen=True)
class _Problem:
    """Checked queries and database, prepared once, with what is needed to score any chunk of queries.

    Scores are float32 products through numpy's BLAS (OpenBLAS): on this project's AMD machine it ran the
    5000 x 5000 score product 1.4x (d = 1024) to 2.3x (d = 128) faster than torch's MKL.
    """

    xq: np.ndarray  # (nq, d) prepared for `metric` (see _prepare)
    xb: np.ndarray  # (nb, d)
    labels_q: np.ndarray  # (nq, C) float32
    labels_b: np.ndarray  # (nb, C)
    # Class ids when every query and database item has exactly one label: relevance is then an id comparison,
    # much cheaper than the label product.
    class_q: np.ndarray | None
    class_b: np.ndarray | None

    @classmethod
    def build(
        cls,
        xq: np.ndarray | torch.Tensor,
        xb: np.ndarray | torch.Tensor,
        labels_q: np.ndarray | torch.Tensor,
        labels_b: np.ndarray | torch.Tensor,
        metric: str,
    ) -> _Problem:
        xq_t, xb_t = _as_tensor(xq), _as_tensor(xb)
        lq, lb = _as_tensor(labels_q), _as_tensor(labels_b)
        if xq_t.ndim != 2 or xb_t.ndim != 2 or xq_t.shape[1] != xb_t.shape[1]:
            raise ValueError(
                f"queries {tuple(xq_t.shape)} and database {tuple(xb_t.shape)} must be (n, d) with equal d"
            )
        if lq.shape[0] != xq_t.shape[0] or lb.shape[0] != xb_t.shape[0]:
            raise ValueError("labels must have one row per query / database item")
        class_q, class_b = _single_label_ids(lq), _single_label_ids(lb)
        if class_q is None or class_b is None:
            class_q = class_b = None
        return cls(
            _prepare(xq_t, metric),
            _prepare(xb_t, metric),
            np.ascontiguousarray(lq.numpy(), dtype=np.float32),
            np.ascontiguousarray(lb.numpy(), dtype=np.float32),
            class_q,
            class_b,
        )

    def chunk(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores (c, nb), relevant (c, nb) bool)`` for the queries in ``rows``."""
        scores = self.xq[rows] @ self.xb.T
        if self.class_q is not None and self.class_b is not None:
            relevant = self.class_q[rows, None] == self.class_b[None, :]
        else:
            relevant = (self.labels_q[rows] @ self.labels_b.T) > 0
        return torch.from_numpy(scores), torch.from_numpy(relevant)


def _single_label_ids(labels: torch.Tensor) -> np.ndarray | None:
    """The class id of each row when ``labels`` is one-hot (exactly one 1, zeros elsewhere), else None."""
    if labels.ndim != 2 or labels.shape[0] == 0:
        return None
    one_hot = bool(((labels == 0) | (labels == 1)).all()) and bool((labels.sum(dim=1) == 1).all())
    return labels.argmax(dim=1).numpy() if one_hot else None


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
    problem = _Problem.build(xq, xb, labels_q, labels_b, metric)
    for sl in _chunks(problem.xq.shape[0], chunk_size):
        scores, relevant = problem.chunk(sl)
        nb = scores.shape[1]
        kk = nb if k <= 0 or k > nb else k
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kk]  # (c, k)
        yield sl, torch.gather(relevant, 1, order)  # (c, k)


def _sortable_keys(scores: np.ndarray) -> np.ndarray | None:
    """Exact order-preserving int32 keys of float32 scores, shifted left one bit; None when they do not fit.

    A float32's bit pattern read as an int32 orders like the float for non-negative values and in reverse for
    negative ones; flipping the 31 low bits of negative patterns gives one increasing scale. Scores in (-2, 2)
    map into [-2**30, 2**30), which leaves the lowest bit free for the relevance flag. Larger scores are first
    scaled by a power of two when that is exact (checked by scaling back); NaN, inf or an inexact scaling gives None.
    """
    lo, hi = float(scores.min()), float(scores.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if lo <= -2.0 or hi >= 2.0:
        exp = math.frexp(max(-lo, hi))[1]  # max |s| < 2**exp
        scaled = np.ldexp(scores, -exp).astype(np.float32)
        if not np.array_equal(np.ldexp(scaled, exp), scores):  # scaling lost bits (values near underflow)
            return None
        scores = scaled
    bits = (scores + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0, which compare equal
    keys = np.right_shift(bits, 31)  # -1 for negative scores, 0 otherwise (in place from here on)
    keys &= np.int32(0x7FFFFFFF)
    keys ^= bits
    keys <<= 1
    return keys


def _rank_keys(scores: np.ndarray, relevant: np.ndarray, *, with_index: bool) -> np.ndarray | None:
    """Sort keys whose lowest bit is the relevance flag; None when the scores cannot be keyed exactly.

    Without the index: int32 ``score_key << 1 | rel``; equal scores sort relevant-last. With it: int64
    ``score_key << 33 | (2**32 - 1 - column) << 1 | rel``, unique per item, so that reading an ascending sort from
    the end gives exactly the stable order (score descending, then database index ascending).
    """
    keys = _sortable_keys(scores)
    if keys is None:
        return None
    if not with_index:
        keys |= relevant
        return keys
    wide = keys.astype(np.int64)  # score_key << 1
    wide <<= 32
    wide |= ((np.int64(2**32 - 1) - np.arange(scores.shape[1], dtype=np.int64)) << 1)[None, :]
    wide |= relevant
    return wide


def _average_precision_sorted_keys(keys: np.ndarray) -> np.ndarray:
    """AP@all of each row of ascending-sorted keys from :func:`_rank_keys` (best item last), ``(q,)`` float64.

    Walking a row from the top, the p-th relevant item at position ``pos_p`` gives ``AP = (1/R) sum_p p / pos_p``.
    """
    q, n = keys.shape
    flat = np.flatnonzero((keys & 1).astype(bool))  # relevant items, row-major, ascending in a row (bool: SIMD)
    rows = flat // n
    n_rel = np.bincount(rows, minlength=q)
    pos = (n - (flat - rows * n)).astype(np.float64)  # 1-based rank from the top
    first = np.cumsum(n_rel) - n_rel  # index in `flat` of each row's first (lowest-ranked) relevant item
    p = (n_rel[rows] - (np.arange(flat.size) - first[rows])).astype(np.float64)  # 1-based rank among relevant
    return np.bincount(rows, weights=p / pos, minlength=q) / np.maximum(n_rel, 1)


def _average_precision_all_by_keys(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """AP@all from one value sort per row, exact and equal to the stable-sort definition.

    Each score becomes an integer key (see ``_sortable_keys``) whose lowest bit is the item's relevance, so one
    SIMD value sort orders the row by score and carries the relevance along: no argsort, no gather.

    Ties: a group of equal scores that mixes relevant and irrelevant items must be ordered by database index. The
    int32 keys order such a group relevant-last, so rows holding one are sorted again with int64 keys that carry the
    index. Up to ``_INT32_KEYS_MAX_DB`` items such rows are rare (about 1 % at 5000 float32 cosines); beyond it
    nearly every row has one, and the int64 keys are used from the start. Scores that cannot be keyed exactly
    (NaN, inf) fall back to the stable sort.

    Args:
        scores: ``(q, n)`` float scores.
        relevant: ``(q, n)`` booleans.

    Returns:
        ``(q,)`` float64 average precisions.
    """
    s = np.ascontiguousarray(scores.numpy(), dtype=np.float32)
    rel = relevant.numpy()
    q, n = s.shape
    if q == 0 or n == 0:
        return torch.zeros(q, dtype=torch.float64)
    with_index = n > _INT32_KEYS_MAX_DB
    keys = _rank_keys(s, rel, with_index=with_index)
    if keys is None:
        return average_precision_from_scores(scores, relevant)
    keys.sort(axis=1)
    ap = _average_precision_sorted_keys(keys)
    if not with_index:
        # Adjacent keys differing only in the relevance bit: one score shared by relevant and irrelevant items.
        mixed = np.flatnonzero(((keys[:, 1:] ^ keys[:, :-1]) == 1).any(axis=1))
        if mixed.size:
            wide = _rank_keys(s[mixed], rel[mixed], with_index=True)
            assert wide is not None  # the same scores keyed once already
            wide.sort(axis=1)
            ap[mixed] = _average_precision_sorted_keys(wide)
    return torch.from_numpy(ap)


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
    chunk_size: int = 256,
) -> np.ndarray:
    """Per-query AP@k, ``(nq,)``, ranking ``xb`` for each row of ``xq`` (see module docstring)."""
    out = np.empty(len(xq), dtype=np.float64)
    if k <= 0 or k >= len(xb):  # mAP@all: one value sort per row, no argsort
        problem = _Problem.build(xq, xb, labels_q, labels_b, metric)

        def run(rows: slice) -> None:
            out[rows] = _average_precision_all_by_keys(*problem.chunk(rows)).numpy()

        rows_per_chunk = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // max(1, problem.xb.shape[0])))
        chunks = list(_chunks(problem.xq.shape[0], rows_per_chunk))
        workers = min(len(chunks), max(1, torch.get_num_threads()))
        if workers <= 1:  # one chunk (a validation split): no pool, BLAS keeps its threads
            for sl in chunks:
                run(sl)
            return out
        # numpy's sorts release the GIL: each worker scores and ranks its own chunks, so at most `workers` chunks
        # of at most _MAX_CHUNK_ELEMENTS pairs are alive at once. One BLAS thread per worker: the workers already
        # fill the cores, and idle OpenBLAS threads spin.
        with _blas_threads().limit(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(run, sl) for sl in chunks]:
                fut.result()
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
    chunk_size: int = 256,
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
    chunk_size: int = 256,
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
    chunk_size: int = 256,
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
    chunk_size: int = 256,
) -> dict[str, float]:
    """Both retrieval directions on one split: image queries against texts and text queries against images.

    Returns:
        ``{"img2txt": mAP, "txt2img": mAP, "avg": mean of the two}``.
    """
    i2t = mean_average_precision(img, txt, labels, labels, k=k, metric=metric, chunk_size=chunk_size)
    t2i = mean_average_precision(txt, img, labels, labels, k=k, metric=metric, chunk_size=chunk_size)
    return {"img2txt": i2t, "txt2img": t2i, "avg": (i2t + t2i) / 2}
