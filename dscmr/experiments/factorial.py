"""Two-level factorial ablations: design, runs, and main-effect / interaction estimates with CIs.

"Do I tune one knob, freeze it, then the next?" That is safe exactly when the knobs do not interact. A 2^k
factorial (every combination of two levels per factor, each over a few seeds) estimates every main effect and
every two-factor interaction from the same runs; a half fraction 2^(k-1) with defining relation I = AB...K
(resolution k) halves the cost and keeps main effects clear of two-factor interactions when k >= 4.

Estimates come from least squares on the +-1 coded design, with seeds as replicates and as blocks (a seed's
shared luck is removed, as in a paired test; the design is balanced, so blocking changes only the residual),
and t-intervals from the residual degrees of freedom (``scipy.stats.t``). An *effect* is the change of the
response when a factor moves from its first to its second level, averaged over the other factors (2 x the
regression coefficient); an *interaction* ``a:b`` is half the difference between a's effect at b's second and
first level. Responses are in mAP points (mAP x 100).
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from dscmr.config import Config, apply_overrides
from dscmr.errors import UsageError
from dscmr.experiments.multiseed import ResultCallback, SeedTask, run_tasks, seed_list, seed_tasks
from dscmr.experiments.stats import paired_comparison, summarize
from dscmr.train import RunDir

FRACTIONS = ("auto", "full", "half")
MAX_FACTORS = 10


@dataclass(frozen=True)
class Factor:
    """A config key with two levels, e.g. ``model.dropout=0,0.2``.

    Attributes:
        key: Dotted config key.
        levels: The two level values as written (parsed as TOML by the config overrides).
    """

    key: str
    levels: tuple[str, str]

    def override(self, level: int) -> str:
        """The ``--set`` override for coded level -1 (first) or +1 (second)."""
        return f"{self.key}={self.levels[0 if level < 0 else 1]}"


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes (so ``[1024,512],[2048]`` is two levels)."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def parse_factor(text: str, base: Config | None = None) -> Factor:
    """Parse ``section.key=level1,level2``; with ``base``, check that both levels apply to it.

    Raises:
        UsageError: Not of that form, or not exactly two distinct levels.
        ConfigError: An unknown key or a bad value for the config.
    """
    if "=" not in text:
        raise UsageError(f"--factor {text!r} must look like section.key=level1,level2")
    key, rest = (s.strip() for s in text.split("=", 1))
    levels = _split_top_level(rest)
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", key) or len(levels) != 2 or not all(levels):
        raise UsageError(f"--factor {text!r} must look like section.key=level1,level2 (exactly two levels)")
    if levels[0] == levels[1]:
        raise UsageError(f"--factor {text!r}: the two levels must differ")
    factor = Factor(key, (levels[0], levels[1]))
    if base is not None:
        for lv in (-1, 1):
            apply_overrides(base, [factor.override(lv)])
    return factor


# ----------------------------------------------------------------------------------------------------------------
# Designs


def full_design(k: int) -> np.ndarray:
    """All ``2**k`` runs of a two-level design, ``(2**k, k)`` of -1/+1 (the last factor alternates fastest)."""
    return np.array(list(itertools.product((-1, 1), repeat=k)), dtype=np.int8).reshape(2**k, k)


def half_design(k: int) -> np.ndarray:
    """The 2^(k-1) half fraction with generator K = AB...(K-1), i.e. defining relation I = AB...K."""
    base = full_design(k - 1)
    return np.column_stack([base, base.prod(axis=1)]).astype(np.int8)


def defining_words(design: np.ndarray) -> list[tuple[int, ...]]:
    """Factor subsets whose column product is constant over the runs (the words of the defining relation)."""
    k = design.shape[1]
    words = []
    for size in range(1, k + 1):
        for combo in itertools.combinations(range(k), size):
            col = design[:, combo].prod(axis=1)
            if np.all(col == col[0]):
                words.append(combo)
    return words


def resolution(design: np.ndarray) -> int | None:
    """Length of the shortest defining word; None for a full factorial (no aliasing at all)."""
    words = defining_words(design)
    return min(len(w) for w in words) if words else None


def make_design(k: int, fraction: str = "auto") -> tuple[np.ndarray, str]:
    """The design for ``k`` factors: ``full``, ``half`` (resolution >= IV required) or ``auto`` (half for k >= 5).

    Raises:
        UsageError: Unknown fraction, too many factors, or a half fraction below resolution IV (k < 4).
    """
    if fraction not in FRACTIONS:
        raise UsageError(f"--fraction must be one of {', '.join(FRACTIONS)}, got {fraction!r}")
    if not 1 <= k <= MAX_FACTORS:
        raise UsageError(f"an ablation needs 1 to {MAX_FACTORS} factors, got {k}")
    if fraction == "auto":
        fraction = "half" if k >= 5 else "full"
    if fraction == "full":
        return full_design(k), "full"
    design = half_design(k)
    res = resolution(design)
    if res is None or res < 4:
        raise UsageError(
            f"a half fraction of {k} factors has resolution {res}: main effects would be aliased with "
            "two-factor interactions; use --fraction full or at least 4 factors"
        )
    return design, "half"


# ----------------------------------------------------------------------------------------------------------------
# Estimation


def _terms(design: np.ndarray, names: list[str]) -> tuple[list[str], list[np.ndarray], dict[str, list[str]]]:
    """Model terms (main effects, then two-factor interactions) with aliased duplicates dropped."""
    k = design.shape[1]
    cand = [(names[i], design[:, i].astype(float)) for i in range(k)]
    cand += [
        (f"{names[i]}:{names[j]}", (design[:, i] * design[:, j]).astype(float))
        for i, j in itertools.combinations(range(k), 2)
    ]
    kept_names: list[str] = []
    kept_cols: list[np.ndarray] = []
    aliases: dict[str, list[str]] = {}
    for name, col in cand:
        # +-1 columns are aliased when they are equal or opposite, i.e. |c . col| == runs
        match = next((n for n, c in zip(kept_names, kept_cols, strict=True) if abs(float(c @ col)) == len(col)), None)
        if match is None:
            kept_names.append(name)
            kept_cols.append(col)
            aliases[name] = []
        else:
            aliases[match].append(name)
    return kept_names, kept_cols, aliases


def estimate_effects(
    design: np.ndarray, y: np.ndarray, names: list[str], *, block_seeds: bool = True
) -> dict[str, Any]:
    """Main effects and two-factor interactions with 95% CIs by least squares.

    Args:
        design: ``(cells, k)`` coded -1/+1.
        y: ``(cells, seeds)`` responses; column ``j`` is seed ``j`` in every cell.
        names: Factor names, ``k`` of them.
        block_seeds: Add one indicator per seed (seeds as blocks).

    Returns:
        ``main_effects`` and ``interactions`` (``{name: {estimate, ci95, se, p, aliased_with}}``), ``df_resid``
        and ``sigma`` (residual standard deviation). CIs and p-values are None without residual degrees of freedom.
    """
    design = np.asarray(design)
    y = np.asarray(y, dtype=np.float64)
    cells, k = design.shape
    if y.ndim != 2 or y.shape[0] != cells:
        raise ValueError(f"y must be (cells={cells}, seeds), got {y.shape}")
    if len(names) != k:
        raise ValueError("one name per factor column")
    n_seeds = y.shape[1]
    term_names, term_cols, aliases = _terms(design, names)
    per_cell = np.column_stack([np.ones(cells), *term_cols])  # (cells, 1 + terms)
    x = np.repeat(per_cell, n_seeds, axis=0)  # (cells * seeds, p); rows cell-major, seed-minor
    if block_seeds and n_seeds > 1:
        blocks = np.tile(np.eye(n_seeds)[:, 1:], (cells, 1))  # (cells * seeds, seeds - 1)
        x = np.column_stack([x, blocks])
    yy = y.reshape(-1)
    beta, _, rank, _ = np.linalg.lstsq(x, yy, rcond=None)
    resid = yy - x @ beta
    df = int(x.shape[0] - rank)
    sigma2 = float(resid @ resid / df) if df > 0 else math.nan
    cov = sigma2 * np.linalg.pinv(x.T @ x)
    tcrit = float(stats.t.ppf(0.975, df)) if df > 0 else math.nan
    main: dict[str, Any] = {}
    inter: dict[str, Any] = {}
    for i, name in enumerate(term_names, start=1):
        est = 2.0 * float(beta[i])
        se = 2.0 * math.sqrt(cov[i, i]) if df > 0 else math.nan
        entry: dict[str, Any] = {
            "estimate": est,
            "ci95": [est - tcrit * se, est + tcrit * se] if df > 0 else None,
            "se": se if df > 0 else None,
            "p": (float(2 * stats.t.sf(abs(est) / se, df)) if se > 0 else (0.0 if est else 1.0)) if df > 0 else None,
            "aliased_with": aliases[name],
        }
        (inter if ":" in name else main)[name] = entry
    return {
        "main_effects": main,
        "interactions": inter,
        "df_resid": df,
        "sigma": math.sqrt(sigma2) if df > 0 else None,
    }


def _excludes_zero(entry: dict[str, Any]) -> bool:
    ci = entry.get("ci95")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def interaction_conclusion(effects: dict[str, Any], *, unit: str = "mAP points") -> str:
    """Plain-language answer to "can these knobs be tuned one at a time?"."""
    inter = effects["interactions"]
    if not inter:
        return "only one factor: no interactions to estimate"
    if effects["df_resid"] <= 0:
        return "interactions cannot be tested without replicates (use --seeds 2 or more)"
    found = {n: e for n, e in inter.items() if _excludes_zero(e)}
    if not found:
        return (
            "no detectable two-factor interaction (every 95% CI includes 0): at this precision the knobs can be "
            "tuned one at a time"
        )
    parts = [
        f"{n} ({e['estimate']:+.2f} {unit}, 95% CI {e['ci95'][0]:+.2f} to {e['ci95'][1]:+.2f})"
        for n, e in found.items()
    ]
    return f"interaction detected: {'; '.join(parts)}; tune these factors together, not one at a time"


def best_cell(y: np.ndarray, *, n_resamples: int = 9999, seed: int = 0) -> dict[str, Any]:
    """The cell with the highest mean and how sure we are it is best.

    ``prob_best`` is the fraction of bootstrap resamples of the seeds (the same seeds for every cell, i.e. a
    paired resample, via ``scipy.stats.bootstrap``) in which this cell keeps the highest mean. The best cell is
    also compared with the runner-up by a paired t-test over seeds.
    """
    y = np.asarray(y, dtype=np.float64)
    means = y.mean(axis=1)
    order = np.argsort(-means, kind="stable")
    best = int(order[0])
    out: dict[str, Any] = {"index": best, "mean": float(means[best]), "prob_best": None, "vs_runner_up": None}
    n_seeds = y.shape[1]
    if n_seeds >= 2 and y.shape[0] >= 2:

        def is_best(*cells: np.ndarray, axis: int = -1) -> np.ndarray:
            m = np.stack([c.mean(axis=axis) for c in cells])  # (cells, ...)
            return (np.argmax(m, axis=0) == best).astype(float)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                tuple(y),
                is_best,
                paired=True,
                vectorized=True,
                n_resamples=n_resamples,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        out["prob_best"] = float(np.mean(res.bootstrap_distribution))
        runner = int(order[1])
        cmp = paired_comparison(y[runner], y[best])
        out["vs_runner_up"] = {
            "runner_up_index": runner,
            "diff_mean": cmp.diff_mean,
            "ci95": list(cmp.ci95),
            "p_ttest": cmp.p_ttest,
        }
    return out


# ----------------------------------------------------------------------------------------------------------------
# Running an ablation


def _cell_name(factors: list[Factor], row: np.ndarray) -> str:
    name = "__".join(f"{f.key}={f.levels[0 if lv < 0 else 1]}" for f, lv in zip(factors, row, strict=True))
    return re.sub(r"[^\w.=+-]", "_", name)


def ablate(
    cfg: Config,
    factors: list[Factor],
    out_dir: str | Path,
    *,
    seeds: int = 3,
    fraction: str = "auto",
    vary_split: bool = False,
    jobs: int = 1,
    data_root: str | None = None,
    config_info: dict[str, Any] | None = None,
    progress: bool = False,
    on_result: ResultCallback | None = None,
    write_report: bool = True,
) -> dict[str, Any]:
    """Run a two-level factorial ablation over ``seeds`` seeds per cell and estimate effects.

    Args:
        cfg: Base config (levels of each factor override it).
        factors: The factors (two levels each).
        out_dir: Output folder; one ``cells/<levels>/`` bench folder per cell; rerunning resumes.
        seeds: Seeds per cell (the same seeds in every cell).
        fraction: ``full``, ``half`` or ``auto`` (half for 5+ factors).
        vary_split: Also vary the validation split with the seed.
        jobs: Parallel worker processes.
        data_root: Overrides ``cfg.data.root``.
        config_info: What to record as the report's ``config``.
        progress: Training progress bars (``jobs = 1`` only).
        on_result: Called as each new run finishes.
        write_report: Write ``report.json``, ``report.md`` and the PNGs.
    """
    design, used = _checked_design(factors, fraction)
    out = Path(out_dir)
    seed_values = seed_list(cfg, seeds)
    RunDir(out).save_config(cfg)
    cells = [
        (
            _cell_name(factors, row),
            apply_overrides(cfg, [f.override(int(lv)) for f, lv in zip(factors, row, strict=True)]),
        )
        for row in design
    ]
    per_cell = [
        seed_tasks(
            c,
            out / "cells" / name,
            seed_values,
            vary_split=vary_split,
            data_root=data_root,
            label=f"cell {i + 1}/{len(cells)}",
            progress=progress,
        )
        for i, (name, c) in enumerate(cells)
    ]
    y = _run_cells(per_cell, jobs=jobs, on_result=on_result)
    report = _ablation_report(
        factors,
        design,
        used,
        [name for name, _ in cells],
        y,
        config_info=config_info or {},
        seeds=seed_values,
        vary_split=vary_split,
        out=out,
    )
    if write_report:
        from dscmr.experiments.report import write_ablate_report

        write_ablate_report(out, report)
    return report


def _checked_design(factors: list[Factor], fraction: str) -> tuple[np.ndarray, str]:
    """The design for ``factors`` (see :func:`make_design`) after checking that there are some, each once."""
    if not factors:
        raise UsageError("ablate needs at least one --factor")
    keys = [f.key for f in factors]
    if len(set(keys)) != len(keys):
        raise UsageError(f"each factor may appear once, got {', '.join(keys)}")
    return make_design(len(factors), fraction)


def _run_cells(per_cell: list[list[SeedTask]], *, jobs: int, on_result: ResultCallback | None) -> np.ndarray:
    """Run every cell's seeds and return the test mAP avg in points, ``(cells, seeds)``.

    Seed-major order: an interruption leaves whole replicates of the design.
    """
    n_cells, n_seeds = len(per_cell), len(per_cell[0]) if per_cell else 0
    order = [(ci, si) for si in range(n_seeds) for ci in range(n_cells)]
    results = run_tasks([per_cell[ci][si] for ci, si in order], jobs=jobs, on_result=on_result)
    y = np.zeros((n_cells, n_seeds))
    for (ci, si), r in zip(order, results, strict=True):
        y[ci, si] = r["test"]["avg"] * 100.0
    return y


def _ablation_report(
    factors: list[Factor],
    design: np.ndarray,
    used: str,
    cell_names: list[str],
    y: np.ndarray,
    *,
    config_info: dict[str, Any],
    seeds: list[int],
    vary_split: bool,
    out: Path,
) -> dict[str, Any]:
    """The report of an ablation from its design and responses ``y`` ``(cells, seeds)``: effects, best cell, cells."""
    effects = estimate_effects(design, y, [f.key for f in factors])
    best = best_cell(y)

    def levels_of(row: np.ndarray) -> dict[str, str]:
        return {f.key: f.levels[0 if lv < 0 else 1] for f, lv in zip(factors, row, strict=True)}

    cell_reports = [
        {"name": name, "levels": levels_of(design[i]), "coded": design[i].tolist(), **summarize(y[i]).to_dict()}
        for i, name in enumerate(cell_names)
    ]
    best["levels"] = levels_of(design[best["index"]])
    best["ci95"] = cell_reports[best["index"]]["ci95"]
    if best["vs_runner_up"] is not None:
        best["vs_runner_up"]["runner_up_levels"] = levels_of(design[best["vs_runner_up"]["runner_up_index"]])
    words = defining_words(design)
    return {
        "config": config_info,
        "factors": [{"name": f.key, "levels": list(f.levels)} for f in factors],
        "design": {
            "fraction": used,
            "cells": len(cell_names),
            "resolution": resolution(design),
            "defining_relation": ["I = " + "".join(chr(65 + i) for i in w) for w in words],
        },
        "seeds": seeds,
        "vary_split": vary_split,
        "unit": "mAP points",
        "response": "test mAP avg of both directions",
        **effects,
        "conclusion": interaction_conclusion(effects),
        "best_cell": best,
        "cells": cell_reports,
        "out": str(out),
    }
