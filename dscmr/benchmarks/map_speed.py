"""Speed benchmark of the mAP evaluation: vectorised, chunked scoring against a per-query Python loop.

The per-query loop is the way retrieval mAP is often computed in research code: for every query, sort the
database, then walk the ranked list in Python accumulating precision at each relevant item. It is timed on
groups of queries and extrapolated linearly (its cost is exactly linear in the number of queries).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dscmr.eval.metrics import average_precisions


def _loop_average_precisions(xq: np.ndarray, xb: np.ndarray, lq: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """Reference per-query loop (cosine ranking, AP over the whole list)."""
    xqn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    xbn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    out = np.zeros(len(xq))
    for i in range(len(xq)):
        order = np.argsort(-(xbn @ xqn[i]), kind="stable")
        hits, total = 0, 0.0
        for rank, j in enumerate(order, start=1):
            if float(lq[i] @ lb[j]) > 0:
                hits += 1
                total += hits / rank
        out[i] = total / hits if hits else 0.0
    return out


def benchmark_map(
    *,
    n: int = 5000,
    dim: int = 1024,
    num_classes: int = 10,
    loop_queries: int = 100,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Time mAP@all over ``n`` queries x ``n`` database items, vectorised vs. a per-query loop.

    Each of ``repeats`` rounds times the vectorised evaluation of all ``n`` queries and then the loop over a new
    group of ``loop_queries`` queries, extrapolated to ``n``; the speed-up is the median of the per-round ratios.
    Alternating the two keeps a slow spell of the machine (a busy or throttled host) from favouring either.

    Args:
        n: Queries and database items.
        dim: Embedding dimension.
        num_classes: Number of (single) labels.
        loop_queries: Queries per timed loop group.
        repeats: Timed runs of each method.
        seed: Data seed.

    Returns:
        Timings in seconds, the speed-up, and the largest AP difference on the looped queries.
    """
    rng = np.random.default_rng(seed)
    labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, n)]
    centres = rng.normal(size=(num_classes, dim)).astype(np.float32)
    xq = (labels @ centres + 2.0 * rng.normal(size=(n, dim))).astype(np.float32)
    xb = (labels @ centres + 2.0 * rng.normal(size=(n, dim))).astype(np.float32)

    # Rounds alternate the two methods, so a slow spell of the machine slows both; each round gives a ratio.
    m = min(loop_queries, n)
    vec_times, loop_times, max_diff = [], [], 0.0
    for r in range(max(1, repeats)):
        t0 = time.perf_counter()
        ap = average_precisions(xq, xb, labels, labels)
        vec_times.append(time.perf_counter() - t0)
        rows = np.arange(r * m, (r + 1) * m) % n
        t0 = time.perf_counter()
        ap_loop = _loop_average_precisions(xq[rows], xb, labels[rows], labels)
        loop_times.append((time.perf_counter() - t0) * n / m)
        max_diff = max(max_diff, float(np.abs(ap[rows] - ap_loop).max()))
    ratios = [lt / vt for lt, vt in zip(loop_times, vec_times, strict=True)]
    vec_seconds, loop_seconds = float(np.median(vec_times)), float(np.median(loop_times))
    return {
        "n_queries": n,
        "n_db": n,
        "dim": dim,
        "vectorised_seconds": round(vec_seconds, 4),
        "vectorised_runs": [round(t, 4) for t in vec_times],
        "loop_seconds_extrapolated": round(loop_seconds, 2),
        "loop_runs_extrapolated": [round(t, 2) for t in loop_times],
        "loop_queries_timed": m * max(1, repeats),
        "speedup": round(float(np.median(ratios)), 1),
        "speedup_runs": [round(x, 1) for x in ratios],
        "map": float(ap.mean()),
        "max_abs_diff_vs_loop": max_diff,
    }
