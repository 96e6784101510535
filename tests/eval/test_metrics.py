"""Retrieval metrics against a plain per-query loop and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from dscmr.eval import average_precisions, cross_modal_map, mean_average_precision, pr_curve, precision_at_k


def loop_ap(xq, xb, lq, lb, k=0):
    """Plain per-query loop: rank by cosine, walk the list, average the precisions at relevant ranks."""
    out = []
    xqn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    xbn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    for i in range(len(xq)):
        scores = xbn @ xqn[i]
        order = sorted(range(len(xb)), key=lambda j: (-scores[j], j))
        if k:
            order = order[:k]
        hits, total = 0, 0.0
        for rank, j in enumerate(order, start=1):
            if float(lq[i] @ lb[j]) > 0:
                hits += 1
                total += hits / rank
        out.append(total / hits if hits else 0.0)
    return np.array(out)


def random_problem(nq=40, nb=60, d=8, c=5, seed=0, multilabel=True):
    rng = np.random.default_rng(seed)
    xq = rng.normal(size=(nq, d)).astype(np.float32)
    xb = rng.normal(size=(nb, d)).astype(np.float32)
    if multilabel:
        lq = (rng.random((nq, c)) < 0.3).astype(np.float32)
        lb = (rng.random((nb, c)) < 0.3).astype(np.float32)
    else:
        lq = np.eye(c, dtype=np.float32)[rng.integers(0, c, nq)]
        lb = np.eye(c, dtype=np.float32)[rng.integers(0, c, nb)]
    return xq, xb, lq, lb


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("k", [0, 1, 7, 60, 100])
def test_matches_plain_loop(multilabel, k):
    xq, xb, lq, lb = random_problem(multilabel=multilabel, seed=k)
    got = average_precisions(xq, xb, lq, lb, k=k, chunk_size=7)
    np.testing.assert_allclose(got, loop_ap(xq, xb, lq, lb, k=k), rtol=1e-6, atol=1e-9)


def test_matches_sklearn_average_precision():
    xq, xb, lq, lb = random_problem(nq=30, nb=80, seed=3)
    got = average_precisions(xq, xb, lq, lb)
    xqn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    xbn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    for i in range(len(xq)):
        rel = (lb @ lq[i]) > 0
        if rel.any():
            assert got[i] == pytest.approx(average_precision_score(rel, xbn @ xqn[i]), rel=1e-6)
        else:
            assert got[i] == 0.0


def test_chunk_size_does_not_change_result():
    xq, xb, lq, lb = random_problem(nq=101, nb=50, seed=5)
    a = mean_average_precision(xq, xb, lq, lb, chunk_size=1)
    b = mean_average_precision(xq, xb, lq, lb, chunk_size=1000)
    assert a == pytest.approx(b, rel=1e-12)


def test_perfect_and_worst_rankings():
    lab = np.eye(2, dtype=np.float32)[[0, 0, 1, 1]]
    xb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], dtype=np.float32)
    assert mean_average_precision(xb, xb, lab, lab) == pytest.approx(1.0)
    # Queries that point at the other class rank the two relevant items last: AP = (1/3 + 2/4) / 2.
    flipped = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    assert mean_average_precision(flipped, xb, lab, lab) == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_hamming_ranking_equals_code_distance_ranking():
    rng = np.random.default_rng(1)
    codes_q = np.sign(rng.normal(size=(20, 16))).astype(np.float32)
    codes_b = np.sign(rng.normal(size=(30, 16))).astype(np.float32)
    lq = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 20)]
    lb = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 30)]
    ham = (codes_q[:, None, :] != codes_b[None, :, :]).sum(-1)
    # Stable ranking by Hamming distance == ranking by negative distance.
    got = average_precisions(codes_q, codes_b, lq, lb, metric="hamming")
    expected = average_precisions(-ham.astype(np.float32), np.eye(30, dtype=np.float32), lq, lb, metric="inner_product")
    np.testing.assert_allclose(got, expected)


def test_precision_at_k_and_pr_curve_against_loop():
    xq, xb, lq, lb = random_problem(nq=25, nb=40, seed=7)
    xqn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    xbn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    rel_sorted = []
    for i in range(len(xq)):
        order = np.argsort(-(xbn @ xqn[i]), kind="stable")
        rel_sorted.append(((lb[order] @ lq[i]) > 0).astype(float))
    rel_sorted = np.array(rel_sorted)
    assert precision_at_k(xq, xb, lq, lb, k=5, chunk_size=4) == pytest.approx(rel_sorted[:, :5].mean())
    curve = pr_curve(xq, xb, lq, lb, points=5, chunk_size=3)
    for r, p, rc in zip(curve.ranks, curve.precision, curve.recall, strict=True):
        assert p == pytest.approx(rel_sorted[:, :r].sum(1).mean() / r)
        n_rel = np.maximum(rel_sorted.sum(1), 1)
        assert rc == pytest.approx((rel_sorted[:, :r].sum(1) / n_rel).mean())
    assert curve.recall[-1] == pytest.approx(np.mean(rel_sorted.sum(1) > 0))


def test_cross_modal_map_directions():
    xq, xb, lq, _ = random_problem(nq=30, nb=30, seed=2, multilabel=False)
    m = cross_modal_map(xq, xb, lq)
    assert m["img2txt"] == pytest.approx(mean_average_precision(xq, xb, lq, lq))
    assert m["txt2img"] == pytest.approx(mean_average_precision(xb, xq, lq, lq))
    assert m["avg"] == pytest.approx((m["img2txt"] + m["txt2img"]) / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        mean_average_precision(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 1)), np.ones((2, 1)))


@pytest.mark.parametrize("multilabel", [False, True])
def test_tied_scores_break_by_database_index(multilabel):
    # Duplicate database rows give exactly tied cosines; mAP@all (counting path with its tie fallback) and
    # mAP@k (sort path) must both follow the stable order, like the loop.
    xq, xb, lq, lb = random_problem(nq=20, nb=30, seed=11, multilabel=multilabel)
    xb[10:20] = xb[0:10]
    for k in (0, 15):
        got = average_precisions(xq, xb, lq, lb, k=k, chunk_size=6)
        np.testing.assert_allclose(got, loop_ap(xq, xb, lq, lb, k=k), rtol=1e-6, atol=1e-9)


def stable_sort_ap(scores, rel):
    """AP@all by definition: stable descending order (ties by database index), then precision at each hit."""
    out = []
    for s, r in zip(scores, rel, strict=True):
        order = sorted(range(len(s)), key=lambda j: (-s[j], j))
        hits, total = 0, 0.0
        for rank, j in enumerate(order, start=1):
            if r[j]:
                hits += 1
                total += hits / rank
        out.append(total / hits if hits else 0.0)
    return np.array(out)


def inner_product_ap(scores, rel):
    """mAP@all of a given score matrix: identity database vectors make the inner products equal ``scores``."""
    nq, nb = scores.shape
    labels_b = np.eye(nb, dtype=np.float32)
    labels_q = rel.astype(np.float32)
    return average_precisions(scores.astype(np.float32), labels_b, labels_q, labels_b, metric="inner_product")


@pytest.mark.parametrize("keys", ["int32", "int64"])  # int64 (index-carrying) keys are used for large databases
@pytest.mark.parametrize(
    "case",
    [
        "coarse_ties",  # many exact ties mixing relevant and irrelevant items
        "large",  # |score| >= 2: keys need an exact power-of-two rescale
        "signed_zero",  # -0.0 and +0.0 are equal scores and must tie
        "tiny",  # subnormal scores next to zero
    ],
)
def test_all_rank_kernel_equals_stable_sort_definition(case, keys, monkeypatch):
    if keys == "int64":
        monkeypatch.setattr("dscmr.eval.metrics._INT32_KEYS_MAX_DB", 0)
    rng = np.random.default_rng(42)
    scores = rng.normal(size=(25, 40)).astype(np.float32)
    if case == "coarse_ties":
        scores = np.round(scores, 1)
    elif case == "large":
        scores = (scores * 1e6).astype(np.float32)
    elif case == "signed_zero":
        scores[:, ::3] = np.where(rng.random((25, 14)) < 0.5, -0.0, 0.0)
    elif case == "tiny":
        scores = (scores * 1e-40).astype(np.float32)  # subnormal, below the float32 normal range
    rel = rng.random((25, 40)) < 0.3
    np.testing.assert_allclose(inner_product_ap(scores, rel), stable_sort_ap(scores, rel), rtol=0, atol=1e-12)


def test_all_rank_kernel_falls_back_to_the_sort_for_non_finite_scores():
    from dscmr.eval.metrics import _average_precision_all_by_keys, average_precision_from_scores

    scores = torch.tensor([[0.5, float("inf"), -1.0, 0.2], [float("nan"), 0.1, 0.3, -0.2]])
    rel = torch.tensor([[True, False, True, False], [False, True, True, False]])
    got = _average_precision_all_by_keys(scores.clone(), rel)
    torch.testing.assert_close(got, average_precision_from_scores(scores, rel))
    assert got[0].item() == pytest.approx((1 / 2 + 2 / 4) / 2)  # inf first, then 0.5 (hit), 0.2, -1.0 (hit)
