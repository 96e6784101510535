"""Reports of the experiment commands: ``report.json``, ``report.md`` and matplotlib PNGs (Agg backend).

Every file is written atomically. matplotlib is imported lazily, so importing this module has no side effects.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dscmr.utils.io import atomic_write_json, atomic_write_text, atomic_write_with


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_with(path, lambda p: p.write_bytes(buf.getvalue()))


def _fmt_ci(ci: list[float] | None, digits: int = 4) -> str:
    return "n/a" if not ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _dots_panel(ax: Any, groups: list[tuple[str, dict[str, Any]]], *, ylabel: str) -> None:
    """One column of dots per group (a metric summary), with the mean and its t-interval as an error bar."""
    for x, (_name, s) in enumerate(groups):
        vals = s["values"]
        jitter = [x + 0.06 * (i - (len(vals) - 1) / 2) / max(1, len(vals)) * 4 for i in range(len(vals))]
        ax.scatter(jitter, vals, s=18, alpha=0.7, color="tab:blue", zorder=2)
        ci = s.get("ci95")
        if ci:
            ax.errorbar(
                [x + 0.3],
                [s["mean"]],
                yerr=[[s["mean"] - ci[0]], [ci[1] - s["mean"]]],
                fmt="o",
                color="tab:red",
                capsize=4,
                zorder=3,
            )
        else:
            ax.plot([x + 0.3], [s["mean"]], "o", color="tab:red")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


# ----------------------------------------------------------------------------------------------------------------
# bench map


def plot_seeds(metrics: dict[str, Any], path: Path, *, title: str, ylabel: str = "test mAP") -> Path:
    """mAP per seed as dots, with the mean and 95% t-interval, one column per metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    _dots_panel(ax, list(metrics.items()), ylabel=ylabel)
    ax.set_title(title)
    return _save_png(fig, path)


def plot_pr(pr: dict[str, Any], path: Path, *, title: str) -> Path:
    """Precision-recall curves of both directions (one run)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, direction in zip(axes, ("img2txt", "txt2img"), strict=True):
        curve = pr[direction]
        ax.plot(curve["recall"], curve["precision"], marker=".")
        ax.set_title(f"{direction} ({title})")
        ax.set_xlabel("recall")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("precision")
    return _save_png(fig, path)


def _metrics_table(metrics: dict[str, Any], digits: int = 4) -> list[str]:
    lines = ["| metric | mean | std | 95% CI (t) | 95% CI (bootstrap) | values |", "|---|---|---|---|---|---|"]
    for name, s in metrics.items():
        vals = ", ".join(f"{v:.{digits}f}" for v in s["values"])
        lines.append(
            f"| {name} | {s['mean']:.{digits}f} | {s['std']:.{digits}f} | {_fmt_ci(s['ci95'], digits)} | "
            f"{_fmt_ci(s['ci95_bootstrap'], digits)} | {vals} |"
        )
    return lines


def _write(out: Path, report: dict[str, Any], md: list[str], plots: list[Callable[[], Path]]) -> None:
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    for plot in plots:
        plot()


def write_bench_report(out: Path, report: dict[str, Any], *, pr: dict[str, Any]) -> None:
    """``bench map``: report.json, report.md, seeds.png (and hamming_seeds.png), pr_curves.png."""
    md = [
        "# mAP over seeds",
        "",
        f"Seeds: {report['seeds']} (vary split: {report['vary_split']}). Test mAP as a fraction; CIs are 95%.",
        "",
        *_metrics_table(report["metrics"]),
    ]
    plots: list[Callable[[], Path]] = [
        lambda: plot_seeds(report["metrics"], out / "seeds.png", title="test mAP per seed (float)"),
        lambda: plot_pr(pr, out / "pr_curves.png", title=f"seed {report['seeds'][0]}"),
    ]
    if report.get("hamming"):
        md += ["", "## Hamming (sign of the learned hash codes)", "", *_metrics_table(report["hamming"])]
        plots.append(lambda: plot_seeds(report["hamming"], out / "hamming_seeds.png", title="Hamming mAP per seed"))
    if report.get("seeds_for_1pt"):
        md += [
            "",
            f"At this run-to-run spread, a paired comparison needs about **{report['seeds_for_1pt']} seeds** per "
            "variant to detect a 1-point mAP difference (paired t-test, alpha 0.05, power 0.8; assumes the paired "
            "difference has sqrt(2) x this per-seed std).",
        ]
    md += ["", "Plots: `seeds.png` (dots per seed, mean and CI), `pr_curves.png` (first seed's run)."]
    _write(out, report, md, plots)


# ----------------------------------------------------------------------------------------------------------------
# compare


def plot_paired(report: dict[str, Any], path: Path) -> Path:
    """Per-seed avg mAP of A and B joined by lines, plus each variant's mean and CI."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    a, b = report["a"]["metrics"]["avg"], report["b"]["metrics"]["avg"]
    for va, vb in zip(a["values"], b["values"], strict=True):
        ax.plot([0, 1], [va, vb], color="0.6", marker="o", markersize=4, zorder=1)
    for x, s in ((-0.15, a), (1.15, b)):
        ci = s["ci95"] or [s["mean"], s["mean"]]
        ax.errorbar(
            [x], [s["mean"]], yerr=[[s["mean"] - ci[0]], [ci[1] - s["mean"]]], fmt="o", color="tab:red", capsize=4
        )
    ax.set_xticks([0, 1], ["A", "B"])
    ax.set_ylabel("test mAP avg (points)")
    ax.set_title("paired seeds")
    ax.grid(axis="y", alpha=0.3)
    return _save_png(fig, path)


def write_compare_report(out: Path, report: dict[str, Any]) -> None:
    """``bench compare``: report.json, report.md, paired.png, seeds.png."""

    def line(name: str, info: dict[str, Any]) -> str:
        return f"- **{name}**: `{info.get('config', '')}` {' '.join(info.get('set', []))}".rstrip()

    dz = report["cohens_dz"]
    md = [
        "# Paired comparison",
        "",
        line("A", report["a"]),
        line("B", report["b"]),
        f"- seeds: {report['seeds']} (the same for A and B)",
        "",
        f"**{report['verdict']}**",
        "",
        "Differences are B - A in mAP points (mAP x 100).",
        "",
        "| statistic | value |",
        "|---|---|",
        f"| mean difference | {report['diff_mean']:+.3f} |",
        f"| 95% CI (t) | {_fmt_ci(report['ci95'], 3)} |",
        f"| paired t-test p | {report['p_ttest']:.4g} |",
        f"| Wilcoxon signed-rank p | {report['p_wilcoxon']:.4g} |",
        f"| bootstrap over queries (seed {report['bootstrap_queries']['seed']}): diff, 95% CI, p | "
        f"{report['bootstrap_queries']['diff']:+.3f}, {_fmt_ci(report['ci95_bootstrap_queries'], 3)}, "
        f"{report['p_bootstrap_queries']:.4g} |",
        f"| P(B > A) on a new seed | {report['prob_b_better']:.3f} |",
        f"| fraction of seeds where B > A | {report['frac_b_better']:.2f} |",
        f"| Cohen's d_z | {'n/a' if dz is None else f'{dz:.2f}'} |",
        f"| seeds needed for {report['min_effect']:g} point | {report['seeds_needed']} |",
        "",
        f"P(B > A): {report['prob_b_better_method']}.",
        "",
        "## A and B over seeds (mAP points)",
        "",
        "### A",
        *_metrics_table(report["a"]["metrics"], 2),
        "",
        "### B",
        *_metrics_table(report["b"]["metrics"], 2),
    ]
    for d, r in report["directions"].items():
        md.append(f"\n{d}: diff {r['diff_mean']:+.3f}, 95% CI {_fmt_ci(r['ci95'], 3)}, p = {r['p_ttest']:.4g}")
    if report.get("hamming"):
        md += ["", f"Hamming: {report['hamming']['verdict']}"]
    plots: list[Callable[[], Path]] = [
        lambda: plot_paired(report, out / "paired.png"),
        lambda: plot_seeds(
            {f"A {k}": v for k, v in report["a"]["metrics"].items()}
            | {f"B {k}": v for k, v in report["b"]["metrics"].items()},
            out / "seeds.png",
            title="test mAP per seed",
            ylabel="test mAP (points)",
        ),
    ]
    _write(out, report, md, plots)


# ----------------------------------------------------------------------------------------------------------------
# ablate


def plot_main_effects(report: dict[str, Any], path: Path) -> Path:
    """Mean response at each level of each factor (one panel per factor)."""
    plt = _pyplot()
    factors = report["factors"]
    fig, axes = plt.subplots(1, len(factors), figsize=(3 * len(factors), 3.2), sharey=True, squeeze=False)
    for j, (ax, f) in enumerate(zip(axes[0], factors, strict=True)):
        lo = [c["mean"] for c in report["cells"] if c["coded"][j] < 0]
        hi = [c["mean"] for c in report["cells"] if c["coded"][j] > 0]
        ax.plot([0, 1], [sum(lo) / len(lo), sum(hi) / len(hi)], marker="o")
        ax.set_xticks([0, 1], f["levels"])
        e = report["main_effects"][f["name"]]
        ax.set_title(f"{f['name']}\n{e['estimate']:+.2f} {_fmt_ci(e['ci95'], 2)}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean test mAP (points)")
    return _save_png(fig, path)


def plot_interactions(report: dict[str, Any], path: Path) -> Path:
    """For each factor pair: mean response vs the first factor, one line per level of the second."""
    plt = _pyplot()
    factors = report["factors"]
    pairs = [(i, j) for i in range(len(factors)) for j in range(i + 1, len(factors))]
    n = max(1, len(pairs))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=False):
        for lvl_j, style in ((-1, "o--"), (1, "s-")):
            ys = []
            for lvl_i in (-1, 1):
                sel = [c["mean"] for c in report["cells"] if c["coded"][i] == lvl_i and c["coded"][j] == lvl_j]
                ys.append(sum(sel) / len(sel) if sel else float("nan"))
            label = f"{factors[j]['name']}={factors[j]['levels'][0 if lvl_j < 0 else 1]}"
            ax.plot([0, 1], ys, style, label=label)
        ax.set_xticks([0, 1], factors[i]["levels"])
        ax.set_xlabel(factors[i]["name"])
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if not pairs:
        axes[0][0].text(0.5, 0.5, "one factor: no interactions", ha="center")
    return _save_png(fig, path)


def _effects_table(effects: dict[str, Any]) -> list[str]:
    lines = ["| term | estimate | 95% CI | p | aliased with |", "|---|---|---|---|---|"]
    for name, e in effects.items():
        p = "n/a" if e["p"] is None else f"{e['p']:.3g}"
        lines.append(
            f"| {name} | {e['estimate']:+.3f} | {_fmt_ci(e['ci95'], 3)} | {p} | {', '.join(e['aliased_with'])} |"
        )
    return lines


def write_ablate_report(out: Path, report: dict[str, Any]) -> None:
    """``ablate``: report.json, report.md, main_effects.png, interactions.png, cells.png."""
    d = report["design"]
    best = report["best_cell"]
    prob = "n/a" if best["prob_best"] is None else f"{best['prob_best']:.2f}"
    md = [
        "# Factorial ablation",
        "",
        f"Design: {d['fraction']} factorial, {d['cells']} cells x {len(report['seeds'])} seeds; resolution "
        f"{d['resolution'] or 'full'}; {', '.join(d['defining_relation']) or 'no aliasing'}.",
        "Response: test mAP (avg of both directions) in mAP points. Effects: change from the first to the second "
        "level, least squares on the +-1 design with seeds as blocks; CIs from the residual t-distribution "
        f"(df = {report['df_resid']}).",
        "",
        "## Main effects",
        *_effects_table(report["main_effects"]),
        "",
        "## Two-factor interactions",
        *_effects_table(report["interactions"]),
        "",
        f"**{report['conclusion']}**",
        "",
        f"**Best cell**: {best['levels']} at {best['mean']:.2f} (95% CI {_fmt_ci(best['ci95'], 2)}); stays best in "
        f"{prob} of bootstrap resamples of the seeds.",
    ]
    if best.get("vs_runner_up"):
        r = best["vs_runner_up"]
        md.append(
            f"Runner-up {r['runner_up_levels']}: best - runner-up = {r['diff_mean']:+.2f} (95% CI "
            f"{_fmt_ci(r['ci95'], 2)}, paired t-test p = {r['p_ttest']:.3g})."
        )
    md += ["", "## Cells", "", "| cell | mean | std | 95% CI | values |", "|---|---|---|---|---|"]
    for c in report["cells"]:
        vals = ", ".join(f"{v:.2f}" for v in c["values"])
        md.append(f"| {c['levels']} | {c['mean']:.2f} | {c['std']:.2f} | {_fmt_ci(c['ci95'], 2)} | {vals} |")
    cells = {f"{i + 1}": c for i, c in enumerate(report["cells"])}
    plots: list[Callable[[], Path]] = [
        lambda: plot_main_effects(report, out / "main_effects.png"),
        lambda: plot_interactions(report, out / "interactions.png"),
        lambda: plot_seeds(cells, out / "cells.png", title="test mAP per cell and seed", ylabel="mAP (points)"),
    ]
    _write(out, report, md, plots)
