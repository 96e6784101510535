"""Statistics for "did my change help?": CIs over seeds, paired tests, power, effect size, query bootstrap.

All distributions and tests come from :mod:`scipy.stats` (``t``, ``nct``, ``ttest_rel``, ``wilcoxon``,
``bootstrap``); nothing here is a hand-written table.

Conventions:

- Values passed in are whatever unit the caller uses; :mod:`dscmr.experiments.compare` and
  :mod:`dscmr.experiments.factorial` pass mAP *points* (mAP x 100) so that "+1.3" reads as "+1.3 mAP points".
- Paired data: ``a[i]`` and ``b[i]`` come from the same seed (same initialisation, data order and split).
- A test "detects" a difference when its two-sided p-value is below ``alpha`` (0.05).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8


def _as_1d(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class Summary:
    """Mean, spread and 95% confidence intervals of one metric over seeds.

    Attributes:
        n: Number of values (seeds).
        mean: Sample mean.
        std: Sample standard deviation (``ddof=1``; 0 for a single value).
        ci95: t-interval for the mean, ``[lo, hi]``; None for fewer than two values.
        ci95_bootstrap: Bootstrap (BCa, falling back to percentile) interval for the mean; None when undefined.
        values: The values themselves, in seed order.
    """

    n: int
    mean: float
    std: float
    ci95: tuple[float, float] | None
    ci95_bootstrap: tuple[float, float] | None
    values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 else None
        d["ci95_bootstrap"] = list(self.ci95_bootstrap) if self.ci95_bootstrap else None
        d["values"] = list(self.values)
        return d


def t_interval(values: Any, *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval for the mean (``scipy.stats.t.interval``); None for n < 2."""
    x = _as_1d(values, "values")
    if x.size < 2:
        return None
    if np.ptp(x) == 0.0:
        return (float(x[0]), float(x[0]))
    sem = float(stats.sem(x))
    mean = float(x.mean())
    lo, hi = stats.t.interval(confidence, df=x.size - 1, loc=mean, scale=sem)
    return (float(lo), float(hi))


def bootstrap_interval(
    values: Any, *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> tuple[float, float] | None:
    """Bootstrap confidence interval for the mean (``scipy.stats.bootstrap``).

    BCa is used when it is defined, the percentile method otherwise (BCa needs some spread in the jackknife).
    Returns None for fewer than two values; a constant sample gives ``(c, c)``.
    """
    x = _as_1d(values, "values")
    if x.size < 2:
        return None
    if np.ptp(x) == 0.0:
        return (float(x[0]), float(x[0]))
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (x,),
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=method,
                rng=np.random.default_rng(seed),
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return (lo, hi)
    return None


def summarize(values: Any, *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> Summary:
    """Mean, standard deviation, t-interval and bootstrap interval of ``values`` (one per seed)."""
    x = _as_1d(values, "values")
    if x.size == 0:
        raise ValueError("cannot summarise an empty list of values")
    return Summary(
        n=int(x.size),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        ci95=t_interval(x, confidence=confidence),
        ci95_bootstrap=bootstrap_interval(x, confidence=confidence, n_resamples=n_resamples, seed=seed),
        values=tuple(float(v) for v in x),
    )


# ----------------------------------------------------------------------------------------------------------------
# Power analysis for the paired t-test


def paired_t_power(n: int, *, effect: float, sd: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test with ``n`` pairs to detect a true mean difference ``effect``.

    Uses the noncentral t distribution: with ``df = n - 1`` and noncentrality ``effect / sd * sqrt(n)``,
    power = P(|T| > t_{1 - alpha/2, df}) (``scipy.stats.nct`` and ``scipy.stats.t``).
    """
    if n < 2:
        return 0.0
    if sd <= 0.0:
        return 1.0 if effect != 0.0 else alpha
    df = n - 1
    crit = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    nc = abs(effect) / sd * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(
    *, effect: float, sd: float, alpha: float = ALPHA, power: float = POWER, max_n: int = 100_000
) -> int | None:
    """Smallest number of paired seeds whose paired t-test reaches ``power`` for a true difference ``effect``.

    Args:
        effect: Difference to detect (same unit as ``sd``).
        sd: Standard deviation of the per-seed paired difference.
        alpha: Two-sided significance level.
        power: Target power.
        max_n: Give up (return None) above this.

    Returns:
        The seed count (at least 2), or None when ``effect`` is 0 or more than ``max_n`` seeds would be needed.
    """
    if effect == 0.0:
        return None
    if sd <= 0.0:
        return 2
    lo, hi = 2, 2
    while paired_t_power(hi, effect=effect, sd=sd, alpha=alpha) < power:
        lo, hi = hi, hi * 2
        if hi > max_n:
            return None
    while lo < hi:  # power is increasing in n: binary search for the first n that reaches it
        mid = (lo + hi) // 2
        if paired_t_power(mid, effect=effect, sd=sd, alpha=alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ----------------------------------------------------------------------------------------------------------------
# Paired comparison over seeds


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of B against A over seeds (differences are ``b - a``).

    Attributes:
        n: Number of paired seeds.
        diff_mean: Mean of ``b - a``.
        diff_std: Standard deviation of ``b - a`` (``ddof=1``).
        ci95: t-interval of the mean difference.
        p_ttest: Two-sided paired t-test p-value (``scipy.stats.ttest_rel``).
        p_wilcoxon: Two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, exact for small n). With
            5 seeds its smallest possible value is 0.0625, so it cannot reach 0.05 below 6 seeds.
        prob_b_better: P(B > A on a new seed), from the posterior predictive t distribution of one paired
            difference: ``t.cdf(diff_mean / (diff_std * sqrt(1 + 1/n)), df=n-1)``.
        frac_b_better: Fraction of the observed seeds where B beat A (ties count half).
        cohens_dz: Effect size for paired data, ``diff_mean / diff_std``.
        seeds_needed: Seeds a paired t-test needs to detect ``min_effect`` (alpha 0.05, power 0.8) at the observed
            standard deviation of the difference.
        min_effect: The difference ``seeds_needed`` is computed for.
    """

    n: int
    diff_mean: float
    diff_std: float
    ci95: tuple[float, float]
    p_ttest: float
    p_wilcoxon: float
    prob_b_better: float
    frac_b_better: float
    cohens_dz: float | None
    seeds_needed: int | None
    min_effect: float

    @property
    def significant(self) -> bool:
        return self.p_ttest < ALPHA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        d["cohens_dz"] = _clean(self.cohens_dz) if self.cohens_dz is not None else None
        return d


def paired_comparison(a: Any, b: Any, *, min_effect: float = 1.0, alpha: float = ALPHA) -> PairedResult:
    """Compare paired samples ``a`` and ``b`` (one value per seed, same seeds).

    Args:
        a: Variant A's metric per seed.
        b: Variant B's metric per seed.
        min_effect: Difference (same unit) for which the needed seed count is reported.
        alpha: Significance level of the interval (``1 - alpha``) and of the power analysis.

    Raises:
        ValueError: Fewer than two pairs or unequal lengths.
    """
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.size != xb.size:
        raise ValueError(f"paired samples must have equal length, got {xa.size} and {xb.size}")
    n = int(xa.size)
    if n < 2:
        raise ValueError("a paired comparison needs at least 2 seeds")
    d = xb - xa
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        # Degenerate: every seed moved by exactly the same amount (often 0: the change did nothing).
        p_t = 1.0 if mean == 0.0 else 0.0
        ci = (mean, mean)
        prob = 0.5 if mean == 0.0 else float(mean > 0)
        dz = None
    else:
        p_t = float(stats.ttest_rel(xb, xa).pvalue)
        lo, hi = stats.t.interval(1.0 - alpha, df=n - 1, loc=mean, scale=sd / math.sqrt(n))
        ci = (float(lo), float(hi))
        prob = float(stats.t.cdf(mean / (sd * math.sqrt(1.0 + 1.0 / n)), df=n - 1))
        dz = mean / sd
    if np.all(d == 0.0):
        p_w = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_w = float(stats.wilcoxon(xb, xa, zero_method="zsplit").pvalue)
    return PairedResult(
        n=n,
        diff_mean=mean,
        diff_std=sd,
        ci95=ci,
        p_ttest=p_t,
        p_wilcoxon=p_w,
        prob_b_better=prob,
        frac_b_better=float(np.mean(np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0)))),
        cohens_dz=dz,
        seeds_needed=seeds_needed(effect=min_effect, sd=sd, alpha=alpha),
        min_effect=min_effect,
    )


def verdict(result: PairedResult, *, unit: str = "mAP points", alpha: float = ALPHA) -> str:
    """One plain-language line summarising a :class:`PairedResult`.

    Examples:
        ``B is better than A: +1.3 mAP points (95% CI +0.6 to +2.0, p = 0.004, 5 paired seeds)``;
        ``no detectable difference at this number of seeds (...); about 14 seeds would be needed to detect a
        difference of 1.0 mAP points``.
    """
    lo, hi = result.ci95
    detail = f"95% CI {lo:+.2f} to {hi:+.2f}, p = {_p(result.p_ttest)}, {result.n} paired seeds"
    if result.p_ttest < alpha and result.diff_mean != 0.0:
        word = "better" if result.diff_mean > 0 else "worse"
        return f"B is {word} than A: {result.diff_mean:+.2f} {unit} ({detail})"
    if result.diff_std == 0.0 and result.diff_mean == 0.0:
        return f"no difference: A and B gave identical results on all {result.n} paired seeds"
    need = result.seeds_needed
    need_text = (
        f"about {need} seeds would be needed to detect a difference of {result.min_effect:g} {unit}"
        if need is not None
        else f"a difference of {result.min_effect:g} {unit} is too small to detect at the observed variance"
    )
    return f"no detectable difference at this number of seeds ({result.diff_mean:+.2f} {unit}, {detail}); {need_text}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# ----------------------------------------------------------------------------------------------------------------
# Paired bootstrap over test queries


@dataclass(frozen=True)
class QueryBootstrap:
    """Paired bootstrap over test queries of the difference in mean AP (B - A).

    Attributes:
        diff: Observed difference of the mean of both directions' mAP.
        ci95: Bootstrap interval (BCa when defined, else percentile).
        p_value: Two-sided bootstrap p-value, ``2 * min(P*(diff <= 0), P*(diff >= 0))`` over the resamples
            (the smallest level at which the percentile interval excludes 0).
        n_queries: Number of resampled query items.
    """

    diff: float
    ci95: tuple[float, float]
    p_value: float
    n_queries: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def bootstrap_queries(
    ap_a: dict[str, Any] | Any,
    ap_b: dict[str, Any] | Any,
    *,
    scale: float = 1.0,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int = 0,
) -> QueryBootstrap:
    """Paired bootstrap over queries: resample query indices, the same resample for A and B and both directions.

    One run per variant suffices: the noise it measures is the choice of test queries, not training noise. The
    statistic is the difference of the averaged-over-directions mAP, ``mean_dir(mean_q AP_b) - mean_dir(mean_q
    AP_a)``, times ``scale`` (100 for mAP points).

    Args:
        ap_a: Per-query APs of A: a dict ``{"img2txt": (nq,), "txt2img": (nq,)}`` (query ``i`` of both directions
            is pair ``i`` of the test split, so one index resamples both) or a single ``(nq,)`` array.
        ap_b: The same for B, on the same queries.
        scale: Multiplier of the difference.
        confidence: Interval level.
        n_resamples: Bootstrap resamples.
        method: ``BCa``, ``percentile`` or ``basic`` (as in ``scipy.stats.bootstrap``).
        seed: Seed of the resampling.
    """
    a_parts = [_as_1d(v, "ap_a") for v in (ap_a.values() if isinstance(ap_a, dict) else [ap_a])]
    b_parts = [_as_1d(v, "ap_b") for v in (ap_b.values() if isinstance(ap_b, dict) else [ap_b])]
    sizes = {p.size for p in a_parts + b_parts}
    if len(a_parts) != len(b_parts) or len(sizes) != 1:
        raise ValueError("per-query APs of A and B must cover the same directions and the same queries")
    nq = sizes.pop()
    if nq < 2:
        raise ValueError("the query bootstrap needs at least 2 queries")
    m = len(a_parts)

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        a_mean = sum(s.mean(axis=axis) for s in samples[:m]) / m
        b_mean = sum(s.mean(axis=axis) for s in samples[m:]) / m
        return (b_mean - a_mean) * scale

    data = tuple(a_parts + b_parts)
    observed = float(statistic(*data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            data,
            statistic,
            paired=True,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method=method,
            rng=np.random.default_rng(seed),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = (float(q) for q in np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2]))
    p = min(1.0, 2.0 * min(float(np.mean(dist <= 0.0)), float(np.mean(dist >= 0.0))))
    return QueryBootstrap(diff=observed, ci95=(lo, hi), p_value=p, n_queries=int(nq))
