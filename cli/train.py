"""``dscmr train`` and ``dscmr eval``."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json


def _default_out(config: Path, seed: int) -> Path:
    return Path("runs") / f"{config.stem}-seed{seed}"


@cli_errors
def train_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Experiment TOML file (see configs/)."),
    data_root: str | None = typer.Option(
        None, "--data-root", help="Data folder; overrides $DSCMR_DATA and the config."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed for init, data order (overrides train.seed)."),
    out: Path | None = typer.Option(None, "--out", help="Run folder [default: runs/<config>-seed<N>]."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: section.key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in --out from its last checkpoint."),
    engine: str | None = typer.Option(None, "--engine", help="Encoders: torch, onnx or onnx-int8 (data.engine)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object with the test metrics, nothing else."),
    ddp: int = typer.Option(
        0, "--ddp", help="Train on N local processes (DDP, gloo, CPU) via torch.distributed.run [default: 1 process]."
    ),
) -> None:
    """Train DSCMR, pick the epoch on validation mAP and report its test mAP."""
    from dscmr.config import load_config
    from dscmr.train import config_for_run, train

    overrides = list(set_) + ([f"train.seed={seed}"] if seed is not None else [])
    overrides += [f'data.engine="{engine}"'] if engine is not None else []
    cfg = load_config(config, overrides)
    run_dir = out or _default_out(config, cfg.train.seed)
    cfg = config_for_run(cfg, run_dir, overrides=overrides, resume=resume)
    if ddp:
        from dscmr.train.distributed import launch_train

        code = launch_train(
            ddp, config, run_dir, data_root=data_root, overrides=overrides, resume=resume, json_out=json_out
        )
        raise typer.Exit(code)
    result = train(cfg, run_dir, data_root=data_root, resume=resume, progress=not json_out)
    summary = result.summary()
    if json_out:
        print_json(summary)
        return
    typer.echo(f"run folder: {run_dir}")
    if result.members:
        epochs = ", ".join(str(m["best_epoch"]) for m in result.members)
        vals = ", ".join(f"{m['val']['avg']:.4f}" for m in result.members)
        typer.echo(f"ensemble of {len(result.members)}: selected epochs {epochs}; member val avg {vals}")
        projected = f" (projected to {cfg.model.project_dim} dimensions)" if cfg.model.project_dim else ""
        typer.echo(f"ensemble val avg {result.val['avg']:.4f}{projected}")
    else:
        typer.echo(
            f"selected epoch (validation mAP): {result.best_epoch} of {result.epochs_run}; "
            f"val avg {result.val['avg']:.4f}"
        )
    typer.echo(
        f"{summary['split']} mAP  img->txt {summary['img2txt']:.4f}  txt->img {summary['txt2img']:.4f}  "
        f"avg {summary['avg']:.4f}  ({summary['train_seconds']:.1f} s)"
    )


@cli_errors
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder written by `dscmr train`."),
    split: str = typer.Option("test", "--split", help="val or test."),
    k: int | None = typer.Option(None, "--k", help="mAP@k cut-off (0 = all) [default: the run's eval.k]."),
    data_root: str | None = typer.Option(
        None, "--data-root", help="Data folder; overrides $DSCMR_DATA and the config."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Evaluate a trained run's mAP on the validation or test split."""
    from dscmr.data import load_dataset
    from dscmr.errors import UsageError
    from dscmr.train import evaluate_split, load_run

    if split not in ("val", "test"):
        raise UsageError(f"--split must be val or test, got {split!r}")
    if k is not None and k < 0:
        raise UsageError(f"--k must be >= 0 (0 = all), got {k}")
    run = load_run(run_dir)
    ds = load_dataset(run.config.data, data_root)
    kk = run.config.eval.k if k is None else k
    metrics = evaluate_split(run.model, ds.split(split), k=kk, chunk_size=run.config.eval.chunk_size)
    summary = {
        **metrics,
        "split": split,
        "k": kk,
        "best_epoch": run.metrics.get("best_epoch"),
        "seed": run.config.train.seed,
        "train_seconds": run.metrics.get("train_seconds"),
    }
    if json_out:
        print_json(summary)
        return
    at = f"@{kk}" if kk else "@all"
    typer.echo(
        f"{split} mAP{at}  img->txt {metrics['img2txt']:.4f}  txt->img {metrics['txt2img']:.4f}  "
        f"avg {metrics['avg']:.4f}"
    )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``train`` and ``eval``."""
    app.command("train")(train_cmd)
    app.command("eval")(eval_cmd)
