"""``dscmr bench map``, ``dscmr bench compare`` and ``dscmr ablate``: mAP over seeds, paired A/B, factorials."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json

_SEEDS_HELP = "Number of seeds: train.seed, train.seed + 1, ..."
_VARY_HELP = "Also vary the validation split with the seed (data.val_seed = seed)."
_JOBS_HELP = "Seeds run in parallel processes; each gets max(1, cores // jobs) torch threads."


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _ci(ci: tuple[float, float] | None, fmt: str = ".4f") -> str:
    return "n/a" if not ci else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


@cli_errors
def bench_map_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Experiment TOML file."),
    seeds: int = typer.Option(5, "--seeds", help=_SEEDS_HELP),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: section.key=value (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", help=_JOBS_HELP),
    out: Path | None = typer.Option(None, "--out", help="Output folder [default: runs/bench-map-<config>]."),
    data_root: str | None = typer.Option(None, "--data-root", help="Data folder; overrides the config."),
    vary_split: bool = typer.Option(False, "--vary-split", help=_VARY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Train and evaluate once per seed; report mean, std and 95% CIs of test mAP. Rerun to resume."""
    from dscmr.config import load_config
    from dscmr.experiments.multiseed import bench_map

    cfg = load_config(config, set_)
    out_dir = out or Path("runs") / f"bench-map-{config.stem}"
    report = bench_map(
        cfg,
        out_dir,
        seeds=seeds,
        vary_split=vary_split,
        jobs=jobs,
        data_root=data_root,
        config_info={"config": str(config), "set": list(set_)},
        progress=not json_out and jobs == 1,
    )
    if json_out:
        print_json(report)
        return
    typer.echo(f"output folder: {out_dir}  (report.md, report.json, seeds.png, pr_curves.png)")
    from dscmr.experiments.report_types import MapReport

    typed = MapReport.from_dict(report)
    for prefix, section in (("", typed.metrics), ("hamming ", typed.hamming)):
        for name, s in section.items():
            typer.echo(
                f"{prefix}{name:8s} mean {s.mean:.4f}  std {s.std:.4f}  95% CI t {_ci(s.ci95)}  "
                f"bootstrap {_ci(s.ci95_bootstrap)}  (n = {s.n})"
            )
    if typed.seeds_for_1pt:
        typer.echo(f"a 1-point mAP difference needs about {typed.seeds_for_1pt} paired seeds at this spread")


@cli_errors
def bench_compare_cmd(
    config: list[Path] = typer.Option(..., "--config", "-c", help="Config A, and optionally config B."),
    seeds: int = typer.Option(5, "--seeds", help=_SEEDS_HELP + " (at least 2; the same seeds for A and B)"),
    set_: list[str] = typer.Option([], "--set", help="Override for both variants (repeatable)."),
    set_a: list[str] = typer.Option([], "--set-a", help="Override for variant A only (repeatable)."),
    set_b: list[str] = typer.Option([], "--set-b", help="Override for variant B only (repeatable)."),
    min_effect: float = typer.Option(1.0, "--min-effect", help="Difference (mAP points) for the seeds-needed line."),
    jobs: int = typer.Option(1, "--jobs", help=_JOBS_HELP),
    out: Path | None = typer.Option(None, "--out", help="Output folder [default: runs/compare-<A>-vs-<B>]."),
    data_root: str | None = typer.Option(None, "--data-root", help="Data folder; overrides the configs."),
    vary_split: bool = typer.Option(False, "--vary-split", help=_VARY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Run A and B on the same seeds and say whether B is better (differences in mAP points)."""
    from dscmr.config import load_config
    from dscmr.errors import UsageError
    from dscmr.experiments.compare import compare

    if len(config) not in (1, 2):
        raise UsageError(f"pass one or two --config files, got {len(config)}")
    if len(config) == 1 and not (set_a or set_b):
        raise UsageError("with one --config, give the variants with --set-a and/or --set-b")
    if seeds < 2:
        raise UsageError(f"compare needs at least 2 paired seeds, got --seeds {seeds}")
    path_a, path_b = config[0], config[-1]
    cfg_a = load_config(path_a, [*set_, *set_a])
    cfg_b = load_config(path_b, [*set_, *set_b])
    out_dir = out or Path("runs") / f"compare-{path_a.stem}-vs-{path_b.stem}"
    report = compare(
        cfg_a,
        cfg_b,
        out_dir,
        seeds=seeds,
        vary_split=vary_split,
        jobs=jobs,
        data_root=data_root,
        info_a={"config": str(path_a), "set": [*set_, *set_a]},
        info_b={"config": str(path_b), "set": [*set_, *set_b]},
        min_effect=min_effect,
        progress=not json_out and jobs == 1,
    )
    if json_out:
        print_json(report)
        return
    typer.echo(f"output folder: {out_dir}  (report.md, report.json, paired.png, seeds.png)")
    from dscmr.experiments.report_types import CompareReport

    c = CompareReport.from_dict(report)
    a, b = c.a_avg, c.b_avg
    split = report.get("split", "test")
    typer.echo(f"A avg {a.mean:.2f} ± {a.std:.2f}   B avg {b.mean:.2f} ± {b.std:.2f}  ({split} mAP points)")
    typer.echo(
        f"t-test p {c.p_ttest:.4g}  Wilcoxon p {c.p_wilcoxon:.4g}  "
        f"query-bootstrap p {c.p_bootstrap_queries:.4g} CI {_ci(c.ci95_bootstrap_queries, '+.2f')}  "
        f"P(B>A) {c.prob_b_better:.2f}  d_z {_num(c.cohens_dz)}"
    )
    typer.echo(c.verdict)


@cli_errors
def ablate_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Base experiment TOML file."),
    factor: list[str] = typer.Option(..., "--factor", help="section.key=level1,level2 (repeatable, 2 levels)."),
    seeds: int = typer.Option(3, "--seeds", help=_SEEDS_HELP + " (per cell)"),
    fraction: str = typer.Option("auto", "--fraction", help="full, half (2^(k-1), resolution >= IV) or auto."),
    set_: list[str] = typer.Option([], "--set", help="Override the base config (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", help=_JOBS_HELP),
    out: Path | None = typer.Option(None, "--out", help="Output folder [default: runs/ablate-<config>]."),
    data_root: str | None = typer.Option(None, "--data-root", help="Data folder; overrides the config."),
    vary_split: bool = typer.Option(False, "--vary-split", help=_VARY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Two-level factorial ablation: main effects, two-factor interactions and the best cell, with CIs."""
    from dscmr.config import load_config
    from dscmr.experiments.factorial import ablate, parse_factor

    cfg = load_config(config, set_)
    factors = [parse_factor(f, cfg) for f in factor]
    out_dir = out or Path("runs") / f"ablate-{config.stem}"
    report = ablate(
        cfg,
        factors,
        out_dir,
        seeds=seeds,
        fraction=fraction,
        vary_split=vary_split,
        jobs=jobs,
        data_root=data_root,
        config_info={"config": str(config), "set": list(set_)},
        progress=False,
    )
    if json_out:
        print_json(report)
        return
    from dscmr.experiments.report_types import AblationReport

    r = AblationReport.from_dict(report)
    typer.echo(f"output folder: {out_dir}  ({r.fraction} factorial, {r.cells} cells x {r.n_seeds} seeds)")
    for title, effects in (("main effects", r.main_effects), ("interactions", r.interactions)):
        typer.echo(f"{title} (mAP points, first -> second level):")
        for name, e in effects.items():
            alias = f"  (aliased with {', '.join(e.aliased_with)})" if e.aliased_with else ""
            typer.echo(f"  {name:40s} {e.estimate:+.2f}  95% CI {_ci(e.ci95, '+.2f')}{alias}")
    typer.echo(r.conclusion)
    prob = "n/a" if r.best_prob is None else f"{r.best_prob:.2f}"
    typer.echo(f"best cell: {r.best_levels} mean {r.best_mean:.2f}; stays best in {prob} of seed resamples")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``bench map``, ``bench compare`` and ``ablate``."""
    bench_app.command("map")(bench_map_cmd)
    bench_app.command("compare")(bench_compare_cmd)
    app.command("ablate")(ablate_cmd)
