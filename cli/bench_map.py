"""``dscmr bench map``, ``dscmr bench compare`` and ``dscmr ablate``: mAP over seeds, paired A/B, factorials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dscmr.cli._common import cli_errors, print_json

_SEEDS_HELP = "Number of seeds: train.seed, train.seed + 1, ..."
_VARY_HELP = "Also vary the validation split with the seed (data.val_seed = seed)."
_JOBS_HELP = "Seeds run in parallel processes; each gets max(1, cores // jobs) torch threads."


def _progress_printer(quiet: bool) -> Any:
    if quiet:
        return None

    def on_result(task: Any, result: dict[str, Any]) -> None:
        t = result["test"]
        secs = result.get("train_seconds") or 0.0
        typer.echo(
            f"{task.label}: test mAP avg {t['avg']:.4f} (img->txt {t['img2txt']:.4f}, txt->img {t['txt2img']:.4f}; "
            f"{secs:.1f} s)",
            err=True,
        )

    return on_result


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _ci(ci: list[float] | None, fmt: str = ".4f") -> str:
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
        on_result=_progress_printer(json_out),
    )
    if json_out:
        print_json(report)
        return
    typer.echo(f"output folder: {out_dir}  (report.md, report.json, seeds.png, pr_curves.png)")
    for section in ("metrics", "hamming"):
        for name, s in (report.get(section) or {}).items():
            prefix = "hamming " if section == "hamming" else ""
            typer.echo(
                f"{prefix}{name:8s} mean {s['mean']:.4f}  std {s['std']:.4f}  95% CI t {_ci(s['ci95'])}  "
                f"bootstrap {_ci(s['ci95_bootstrap'])}  (n = {s['n']})"
            )
    if report.get("seeds_for_1pt"):
        typer.echo(f"a 1-point mAP difference needs about {report['seeds_for_1pt']} paired seeds at this spread")


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
    from dscmr.errors import ConfigError
    from dscmr.experiments.compare import compare

    if len(config) not in (1, 2):
        raise ConfigError(f"pass one or two --config files, got {len(config)}")
    if len(config) == 1 and not (set_a or set_b):
        raise ConfigError("with one --config, give the variants with --set-a and/or --set-b")
    if seeds < 2:
        raise ConfigError(f"compare needs at least 2 paired seeds, got --seeds {seeds}")
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
        on_result=_progress_printer(json_out),
    )
    if json_out:
        print_json(report)
        return
    typer.echo(f"output folder: {out_dir}  (report.md, report.json, paired.png, seeds.png)")
    a, b = report["a"]["metrics"]["avg"], report["b"]["metrics"]["avg"]
    typer.echo(f"A avg {a['mean']:.2f} ± {a['std']:.2f}   B avg {b['mean']:.2f} ± {b['std']:.2f}  (mAP points)")
    typer.echo(
        f"t-test p {report['p_ttest']:.4g}  Wilcoxon p {report['p_wilcoxon']:.4g}  "
        f"query-bootstrap p {report['p_bootstrap_queries']:.4g} CI {_ci(report['ci95_bootstrap_queries'], '+.2f')}  "
        f"P(B>A) {report['prob_b_better']:.2f}  d_z {_num(report['cohens_dz'])}"
    )
    typer.echo(report["verdict"])


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
        on_result=_progress_printer(json_out),
    )
    if json_out:
        print_json(report)
        return
    d = report["design"]
    typer.echo(
        f"output folder: {out_dir}  ({d['fraction']} factorial, {d['cells']} cells x {len(report['seeds'])} seeds)"
    )
    for title, key in (("main effects", "main_effects"), ("interactions", "interactions")):
        typer.echo(f"{title} (mAP points, first -> second level):")
        for name, e in report[key].items():
            alias = f"  (aliased with {', '.join(e['aliased_with'])})" if e["aliased_with"] else ""
            typer.echo(f"  {name:40s} {e['estimate']:+.2f}  95% CI {_ci(e['ci95'], '+.2f')}{alias}")
    typer.echo(report["conclusion"])
    best = report["best_cell"]
    prob = "n/a" if best["prob_best"] is None else f"{best['prob_best']:.2f}"
    typer.echo(f"best cell: {best['levels']} mean {best['mean']:.2f}; stays best in {prob} of seed resamples")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``bench map``, ``bench compare`` and ``ablate``."""
    bench_app.command("map")(bench_map_cmd)
    bench_app.command("compare")(bench_compare_cmd)
    app.command("ablate")(ablate_cmd)
