"""Statistics of the experiments module: CIs, power, paired comparisons, the query bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dscmr.experiments.stats import (
    bootstrap_queries,
    paired_comparison,
    paired_t_power,
    seeds_needed,
    summarize,
    verdict,
)


def test_summarize_matches_scipy():
    x = [0.51, 0.53, 0.52, 0.55, 0.50]
    s = summarize(x)
    assert s.n == 5 and s.mean == pytest.approx(np.mean(x)) and s.std == pytest.approx(np.std(x, ddof=1))
    lo, hi = stats.t.interval(0.95, 4, loc=np.mean(x), scale=stats.sem(x))
    assert s.ci95 == pytest.approx((lo, hi))
    assert s.ci95_bootstrap is not None and s.ci95_bootstrap[0] <= s.mean <= s.ci95_bootstrap[1]
    one = summarize([0.4])
    assert one.ci95 is None and one.ci95_bootstrap is None and one.std == 0.0
    const = summarize([0.4, 0.4, 0.4])
    assert const.ci95 == (0.4, 0.4) and const.ci95_bootstrap == (0.4, 0.4)


def test_power_and_seed_count():
    # d_z = 1: the textbook paired t-test needs 10 pairs for power 0.8 at alpha 0.05.
    n = seeds_needed(effect=1.0, sd=1.0)
    assert n == 10
    assert paired_t_power(n, effect=1.0, sd=1.0) >= 0.8 > paired_t_power(n - 1, effect=1.0, sd=1.0)
    assert seeds_needed(effect=0.5, sd=1.0) > n  # smaller effects need more seeds
    assert seeds_needed(effect=0.0, sd=1.0) is None
    assert paired_t_power(20, effect=0.0, sd=1.0) == pytest.approx(0.05)


def _simulate(delta: float, n_seeds: int, reps: int, rng: np.random.Generator) -> float:
    """Fraction of repetitions where the comparison declares B better (p < 0.05, positive difference)."""
    flagged = 0
    for _ in range(reps):
        seed_luck = rng.normal(0.0, 1.5, size=n_seeds)  # shared by A and B on the same seed
        a = 60.0 + seed_luck + rng.normal(0.0, 1 / np.sqrt(2), size=n_seeds)
        b = 60.0 + delta + seed_luck + rng.normal(0.0, 1 / np.sqrt(2), size=n_seeds)  # sd of b - a: 1 point
        r = paired_comparison(a, b)
        flagged += r.significant and r.diff_mean > 0
    return flagged / reps


def test_compare_detects_one_point_at_documented_seed_count():
    rng = np.random.default_rng(1234)
    n = seeds_needed(effect=1.0, sd=1.0)  # the documented count for a paired sd of 1 point
    power = _simulate(1.0, n, 200, rng)
    # True power is 0.80 by construction; 200 seeded reps have a Monte-Carlo sd of ~0.028.
    assert power >= 0.74
    assert abs(power - paired_t_power(n, effect=1.0, sd=1.0)) < 3 * np.sqrt(0.8 * 0.2 / 200)
    false_alarms = _simulate(0.0, n, 200, rng)
    assert false_alarms <= 0.08


def test_paired_comparison_fields_and_verdicts():
    a = np.array([60.0, 61.0, 59.5, 60.5, 60.2])
    b = a + np.array([1.2, 1.4, 1.1, 1.5, 1.3])
    r = paired_comparison(a, b)
    assert r.diff_mean == pytest.approx(1.3) and r.ci95[0] < 1.3 < r.ci95[1]
    assert r.p_ttest == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert r.p_wilcoxon == pytest.approx(0.0625)  # the smallest two-sided value with 5 pairs
    assert r.prob_b_better > 0.95 and r.frac_b_better == 1.0
    assert r.cohens_dz == pytest.approx(1.3 / np.std(b - a, ddof=1))
    line = verdict(r)
    assert line.startswith("B is better than A: +1.30 mAP points (95% CI +")
    assert "5 paired seeds" in line

    noisy = paired_comparison(a, a + np.array([0.5, -0.4, 0.3, -0.6, 0.1]))
    line = verdict(noisy)
    assert line.startswith("no detectable difference at this number of seeds")
    assert f"about {noisy.seeds_needed} seeds would be needed to detect a difference of 1 mAP points" in line

    same = paired_comparison(a, a)
    assert same.p_ttest == 1.0 and "identical" in verdict(same)
    with pytest.raises(ValueError):
        paired_comparison([1.0], [2.0])


def test_query_bootstrap_coverage():
    """The paired bootstrap over queries covers the true difference at close to 95%."""
    rng = np.random.default_rng(7)
    true_diff, nq, reps = 0.02, 150, 200
    covered = 0
    for rep in range(reps):
        a = {d: rng.uniform(0.2, 0.8, size=nq) for d in ("img2txt", "txt2img")}
        b = {d: a[d] + rng.normal(true_diff, 0.05, size=nq) for d in a}
        res = bootstrap_queries(a, b, n_resamples=999, seed=rep)
        covered += res.ci95[0] <= true_diff <= res.ci95[1]
    assert 0.90 <= covered / reps <= 0.99


def test_query_bootstrap_same_resample_for_a_and_b():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=100)
    res = bootstrap_queries(a, a + 0.01, n_resamples=999, scale=100)
    # b - a is the same for every query, so every resample gives exactly +1 point.
    assert res.diff == pytest.approx(1.0) and res.ci95 == pytest.approx((1.0, 1.0)) and res.p_value == 0.0
    with pytest.raises(ValueError):
        bootstrap_queries(a, a[:50])
