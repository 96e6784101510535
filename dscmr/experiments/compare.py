"""Paired comparison of two configs over the same seeds: "is B better than A?".

Both variants run on the same seeds (same initialisation seed, data order and, with ``vary_split``, validation
split), so the per-seed differences cancel most of the run-to-run noise. Differences are reported in **mAP
points** (mAP x 100) everywhere in this module's output, verdict line included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dscmr.config import Config
from dscmr.errors import UsageError
from dscmr.experiments.multiseed import (
    ResultCallback,
    aggregate,
    config_fingerprint,
    load_query_aps,
    run_tasks,
    seed_list,
    seed_tasks,
)
from dscmr.experiments.stats import bootstrap_queries, paired_comparison, verdict
from dscmr.train import RunDir

UNIT = "mAP points"
SCALE = 100.0
PROB_METHOD = "posterior predictive: P(D > 0) for one new paired difference D ~ mean + sd * sqrt(1 + 1/n) * t(n-1)"


def compare_results(
    results_a: list[dict[str, Any]],
    results_b: list[dict[str, Any]],
    *,
    min_effect: float = 1.0,
    n_resamples: int = 9999,
) -> dict[str, Any]:
    """The statistics of a paired comparison from finished per-seed results (same seeds, same order).

    Args:
        results_a: Per-seed results of A (as written by :func:`dscmr.experiments.multiseed.run_seed`).
        results_b: Per-seed results of B.
        min_effect: Difference, in mAP points, for which the needed seed count is reported.
        n_resamples: Resamples of the bootstrap over queries.

    Returns:
        ``diff_mean``, ``ci95``, ``p_ttest``, ``p_wilcoxon``, ``p_bootstrap_queries``, ``prob_b_better``,
        ``cohens_dz``, ``seeds_needed``, ``verdict``, per-direction and (when configured) Hamming comparisons.
    """
    if len(results_a) != len(results_b):
        raise ValueError("A and B must have the same number of seeds")
    a_avg = [r["test"]["avg"] * SCALE for r in results_a]
    b_avg = [r["test"]["avg"] * SCALE for r in results_b]
    main = paired_comparison(a_avg, b_avg, min_effect=min_effect)
    qb = bootstrap_queries(
        load_query_aps(results_a[0]), load_query_aps(results_b[0]), scale=SCALE, n_resamples=n_resamples
    )
    out: dict[str, Any] = {
        "unit": UNIT,
        **main.to_dict(),
        "p_bootstrap_queries": qb.p_value,
        "ci95_bootstrap_queries": list(qb.ci95),
        "bootstrap_queries": {**qb.to_dict(), "seed": results_a[0]["seed"]},
        "prob_b_better_method": PROB_METHOD,
        "verdict": verdict(main, unit=UNIT),
        "directions": {
            d: paired_comparison(
                [r["test"][d] * SCALE for r in results_a],
                [r["test"][d] * SCALE for r in results_b],
                min_effect=min_effect,
            ).to_dict()
            for d in ("img2txt", "txt2img")
        },
        "hamming": None,
    }
    if all(r.get("hamming") for r in results_a + results_b):
        ham = paired_comparison(
            [r["hamming"]["avg"] * SCALE for r in results_a],
            [r["hamming"]["avg"] * SCALE for r in results_b],
            min_effect=min_effect,
        )
        out["hamming"] = {**ham.to_dict(), "verdict": verdict(ham, unit=UNIT)}
    return out


def compare(
    cfg_a: Config,
    cfg_b: Config,
    out_dir: str | Path,
    *,
    seeds: int = 5,
    vary_split: bool = False,
    jobs: int = 1,
    data_root: str | None = None,
    info_a: dict[str, Any] | None = None,
    info_b: dict[str, Any] | None = None,
    min_effect: float = 1.0,
    progress: bool = False,
    on_result: ResultCallback | None = None,
    write_report: bool = True,
) -> dict[str, Any]:
    """Run A and B on the same seeds (in ``out/a`` and ``out/b``, resumably) and compare them.

    Args:
        cfg_a: Config A (its ``train.seed`` is the first seed; B uses the same seeds).
        cfg_b: Config B.
        out_dir: Output folder.
        seeds: Number of paired seeds (at least 2).
        vary_split: Also vary the validation split with the seed.
        jobs: Parallel worker processes.
        data_root: Overrides both configs' ``data.root``.
        info_a: What to record as ``a`` (config file, overrides).
        info_b: What to record as ``b``.
        min_effect: Difference (mAP points) for the "seeds needed" estimate.
        progress: Training progress bars (``jobs = 1`` only).
        on_result: Called as each new run finishes.
        write_report: Write ``report.json``, ``report.md`` and the PNGs.

    Raises:
        UsageError: Fewer than 2 seeds.
    """
    if seeds < 2:
        raise UsageError(f"compare needs at least 2 paired seeds, got --seeds {seeds}")
    out = Path(out_dir)
    seed_values = seed_list(cfg_a, seeds)
    RunDir(out / "a").save_config(cfg_a)
    RunDir(out / "b").save_config(cfg_b)
    kw: dict[str, Any] = {"vary_split": vary_split, "data_root": data_root, "progress": progress}
    tasks_a = seed_tasks(cfg_a, out / "a", seed_values, label="A", **kw)
    tasks_b = seed_tasks(cfg_b, out / "b", seed_values, label="B", **kw)
    interleaved = [t for pair in zip(tasks_a, tasks_b, strict=True) for t in pair]  # an interruption leaves pairs
    results = run_tasks(interleaved, jobs=jobs, on_result=on_result)
    res_a, res_b = results[0::2], results[1::2]
    stats_out = compare_results(res_a, res_b, min_effect=min_effect)
    report: dict[str, Any] = {
        "a": {**(info_a or {}), "metrics": aggregate(res_a, scale=SCALE)["metrics"]},
        "b": {**(info_b or {}), "metrics": aggregate(res_b, scale=SCALE)["metrics"]},
        "seeds": seed_values,
        "split": res_a[0].get("split", "test"),  # "val" for a dataset without a test split
        "vary_split": vary_split,
        **stats_out,
        "same_config": config_fingerprint(cfg_a) == config_fingerprint(cfg_b),
        "out": str(out),
    }
    if write_report:
        from dscmr.experiments.report import write_compare_report

        write_compare_report(out, report)
    return report
