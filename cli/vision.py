"""``dscmr vision ...``: hyperspectral classification, denoising, image classification, dead kernels.

Every command parses options into a frozen config (optionally from ``--config FILE.toml`` and ``--set
section.key=value``), calls one library function from :mod:`dscmr.vision_tasks` and prints a summary, or with
``--json`` exactly one JSON object on stdout (progress bars go to stderr).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dscmr.cli._common import cli_errors, print_json
from dscmr.utils.progress import current_progress, no_progress
from dscmr.vision_tasks.options import default_run_dir, resolve_config

if TYPE_CHECKING:
    from dscmr.vision_tasks.runs import ProgressFn

vision_app = typer.Typer(help="Vision models and tasks (HybridSN, DnCNN, MobileNets).", no_args_is_help=True)
hsi_app = typer.Typer(help="Hyperspectral pixel classification with HybridSN.", no_args_is_help=True)
denoise_app = typer.Typer(help="Gaussian denoising with DnCNN.", no_args_is_help=True)
classify_app = typer.Typer(help="Image classification with MobileNets (ImageFolder layout).", no_args_is_help=True)
vision_app.add_typer(hsi_app, name="hsi")
vision_app.add_typer(denoise_app, name="denoise")
vision_app.add_typer(classify_app, name="classify")

ConfigOpt = typer.Option(None, "--config", help="TOML config file (see configs/vision/).")
SetOpt = typer.Option(None, "--set", help="Override: section.key=value (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
ThreadsOpt = typer.Option(None, "--threads", help="torch intra-op threads.")


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[ProgressFn]:
    """The CLI's one renderer (:mod:`dscmr.cli._progress`) as a ``progress(done, total, description)`` callback."""
    yield current_progress() if enabled else no_progress


def _print_table(title: str, rows: dict[str, Any]) -> None:
    typer.echo(title)
    for k, v in rows.items():
        typer.echo(f"  {k:<14} {v:.3f}" if isinstance(v, float) else f"  {k:<14} {v}")


# ----------------------------------------------------------------------------------------------------------
# Models


@vision_app.command("models")
@cli_errors
def models_cmd(
    pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'mobilenet*'."),
    json_out: bool = JsonOpt,
) -> None:
    """List the registered vision models."""
    from dscmr.vision import list_models

    names = list_models(pattern)
    if json_out:
        print_json({"models": names})
    else:
        typer.echo("\n".join(names))


# ----------------------------------------------------------------------------------------------------------
# Hyperspectral classification


@hsi_app.command("train")
@cli_errors
def hsi_train(
    model: str = typer.Option(None, "--model", help="hybridsn | hybridsn_dsc | hybridsn_2d3d."),
    train_ratio: float = typer.Option(None, "--train-ratio", help="Fraction of labelled pixels for training."),
    epochs: int = typer.Option(None, "--epochs"),
    seed: int = typer.Option(None, "--seed"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr"),
    pca_bands: int = typer.Option(None, "--pca-bands", help="PCA components (30 in the paper)."),
    patch_size: int = typer.Option(None, "--patch-size", help="Odd patch side (25 in the paper)."),
    cube: Path = typer.Option(None, "--cube", help=".npy/.mat (H, W, bands) cube; default Indian Pines."),
    gt: Path = typer.Option(None, "--gt", help=".npy/.mat (H, W) ground truth, 0 = unlabelled."),
    cube_key: str = typer.Option(None, "--cube-key", help="Variable name of the cube in a .mat file."),
    gt_key: str = typer.Option(None, "--gt-key", help="Variable name of the ground truth in a .mat file."),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/vision/hsi/...)."),
    threads: int = ThreadsOpt,
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train and evaluate HybridSN on a hyperspectral cube; print OA, AA and kappa (%)."""
    from dscmr.vision_tasks.hsi import HsiConfig, run_hsi

    cfg = resolve_config(
        HsiConfig,
        config,
        sets,
        {
            "model.name": model,
            "data.train_ratio": train_ratio,
            "data.pca_bands": pca_bands,
            "data.patch_size": patch_size,
            "data.cube": str(cube) if cube else None,
            "data.gt": str(gt) if gt else None,
            "data.cube_key": cube_key,
            "data.gt_key": gt_key,
            "train.epochs": epochs,
            "train.seed": seed,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.threads": threads,
        },
    )
    out = out or default_run_dir("hsi", cfg.model.name, cfg.train.seed)
    with progress_bar() as progress:
        metrics = run_hsi(cfg, out, progress=progress)
    summary = {k: metrics[k] for k in ("oa", "aa", "kappa", "train_seconds", "seed")}
    if json_out:
        print_json(summary)
        return
    _print_table(f"{cfg.model.name} on {cfg.data.cube or 'Indian Pines'} -> {out}", summary)
    for row in metrics["per_class"]:
        typer.echo(f"    {row['class']:>3} {row['name']:<30} n_test={row['n_test']:<5} acc={row['accuracy']:.2f}")


# ----------------------------------------------------------------------------------------------------------
# Denoising


@denoise_app.command("train")
@cli_errors
def denoise_train(
    data: Path = typer.Option(None, "--data", help="Folder of clean training images (default shared Train400)."),
    val: Path = typer.Option(None, "--val", help="Folder evaluated after training (e.g. Set12)."),
    sigma: float = typer.Option(None, "--sigma", help="Noise std on the 0..255 scale."),
    sigma_max: float = typer.Option(None, "--sigma-max", help="Blind training: sigma ~ U[sigma, sigma_max]."),
    epochs: int = typer.Option(None, "--epochs"),
    steps: int = typer.Option(None, "--steps", help="Mini-batches per epoch."),
    batch_size: int = typer.Option(None, "--batch-size"),
    patch_size: int = typer.Option(None, "--patch-size"),
    lr: float = typer.Option(None, "--lr"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop training after this many minutes."),
    seed: int = typer.Option(None, "--seed"),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/vision/denoise/...)."),
    threads: int = ThreadsOpt,
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train DnCNN on random patches with AWGN (residual learning)."""
    from dscmr.vision_tasks.denoise import DenoiseConfig, train_denoiser

    cfg = resolve_config(
        DenoiseConfig,
        config,
        sets,
        {
            "data.train_dir": str(data) if data else None,
            "data.val_dir": str(val) if val else None,
            "data.sigma": sigma,
            "data.sigma_max": sigma_max,
            "data.patch_size": patch_size,
            "train.epochs": epochs,
            "train.steps_per_epoch": steps,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.max_minutes": max_minutes,
            "train.seed": seed,
            "train.threads": threads,
        },
    )
    out = out or default_run_dir("denoise", cfg.model.name, cfg.train.seed)
    with progress_bar() as progress:
        metrics = train_denoiser(cfg, out, progress=progress)
    summary = {k: v for k, v in metrics.items() if k != "loss_history"}
    if json_out:
        print_json(summary)
    else:
        _print_table(f"DnCNN trained -> {out}", summary)


@denoise_app.command("eval")
@cli_errors
def denoise_eval(
    weights: Path = typer.Option(..., "--weights", help="Run folder or .safetensors (ours or the reference)."),
    data: Path = typer.Option(..., "--data", help="Folder of clean images."),
    sigma: float = typer.Option(25.0, "--sigma", help="Noise std on the 0..255 scale."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    limit: int = typer.Option(0, "--limit", help="Evaluate only the first N images (0 = all)."),
    threads: int = ThreadsOpt,
    json_out: bool = JsonOpt,
) -> None:
    """PSNR/SSIM of a denoiser on a folder of images with seeded AWGN."""
    from dscmr.vision_tasks.denoise import evaluate_denoiser, load_denoiser
    from dscmr.vision_tasks.runs import set_threads

    set_threads(threads or 0)
    model = load_denoiser(weights)
    with progress_bar() as progress:
        result = evaluate_denoiser(model, data, sigma=sigma, seed=seed, limit=limit, progress=progress)
    summary = {k: result[k] for k in ("psnr", "ssim", "noisy_psnr", "n")}
    if json_out:
        print_json(summary)
        return
    for row in result["per_image"]:
        typer.echo(f"  {row['image']:<16} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}")
    _print_table(f"sigma={sigma:g} seed={seed}", summary)


@denoise_app.command("apply")
@cli_errors
def denoise_apply(
    image: Path = typer.Argument(..., help="Noisy image."),
    out: Path = typer.Option(..., "--out", help="Output PNG."),
    weights: Path = typer.Option(..., "--weights", help="Run folder or .safetensors."),
    add_noise: float = typer.Option(0.0, "--add-noise", help="Add seeded AWGN of this sigma first (demo)."),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = JsonOpt,
) -> None:
    """Denoise one image and write it as PNG."""
    from dscmr.vision_tasks.denoise import apply_denoiser, load_denoiser

    path = apply_denoiser(load_denoiser(weights), image, out, add_noise=add_noise, seed=seed)
    if json_out:
        print_json({"out": str(path)})
    else:
        typer.echo(f"wrote {path}")


# ----------------------------------------------------------------------------------------------------------
# Image classification


@classify_app.command("train")
@cli_errors
def classify_train(
    data: Path = typer.Option(None, "--data", help="ImageFolder root (one sub-folder per class)."),
    model: str = typer.Option(None, "--model", help="mobilenet_v1_100, mobilenet_v2_100, ..."),
    pretrained: bool = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet weights."),
    image_size: int = typer.Option(None, "--image-size"),
    epochs: int = typer.Option(None, "--epochs"),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr"),
    seed: int = typer.Option(None, "--seed"),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/vision/classify/...)."),
    threads: int = ThreadsOpt,
    config: Path = ConfigOpt,
    sets: list[str] = SetOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train or fine-tune a MobileNet classifier; saves safetensors + config in the run folder."""
    from dscmr.vision_tasks.classify import ClassifyConfig, train_classifier

    cfg = resolve_config(
        ClassifyConfig,
        config,
        sets,
        {
            "data.root": str(data) if data else None,
            "data.image_size": image_size,
            "model.name": model,
            "model.pretrained": pretrained,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.seed": seed,
            "train.threads": threads,
        },
    )
    out = out or default_run_dir("classify", cfg.model.name, cfg.train.seed)
    with progress_bar() as progress:
        metrics = train_classifier(cfg, out, progress=progress)
    summary = {k: v for k, v in metrics.items() if k != "loss_history"}
    if json_out:
        print_json(summary)
    else:
        _print_table(f"{cfg.model.name} -> {out}", summary)


# ----------------------------------------------------------------------------------------------------------
# Dead depthwise kernels


@vision_app.command("dead-kernels")
@cli_errors
def dead_kernels_cmd(
    source: Path = typer.Argument(..., help="Run folder or weights file (.safetensors / .pth)."),
    rel: float = typer.Option(0.01, "--rel", help="Dead when L2 norm < rel x layer median."),
    abs_threshold: float = typer.Option(None, "--abs", help="Use this absolute L2 threshold instead."),
    json_out: bool = JsonOpt,
) -> None:
    """Fraction of depthwise kernels whose L2 norm is (nearly) zero."""
    from dscmr.vision_tasks.dead_kernels import dead_kernel_report, load_weights_for_report

    report = dead_kernel_report(load_weights_for_report(source), rel_threshold=rel, abs_threshold=abs_threshold)
    if json_out:
        print_json(report.to_dict())
        return
    for layer in report.layers:
        typer.echo(f"  {layer['name']:<40} {layer['dead']:>4}/{layer['kernels']:<4}")
    typer.echo(f"dead depthwise kernels: {report.dead}/{report.total} = {100 * report.fraction:.2f}% ({report.rule})")


def bench_dead_kernels(
    epochs: int = typer.Option(3, "--epochs"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(64, "--batch-size"),
    weight_decay: float = typer.Option(4e-5, "--weight-decay"),
    rel: float = typer.Option(0.01, "--rel", help="Dead when L2 norm < rel x layer median."),
    abs_threshold: float = typer.Option(None, "--abs", help="Use this absolute L2 threshold instead."),
    threads: int = typer.Option(0, "--threads"),
    limit: int = typer.Option(0, "--limit", help="Use only the first N digits (0 = all 1797)."),
    json_out: bool = JsonOpt,
) -> None:
    """Train MobileNetV1 and V2 briefly on upscaled sklearn digits; print both dead-kernel fractions."""
    from dscmr.vision_tasks.dead_kernels import dead_kernel_benchmark

    with progress_bar() as progress:
        result = dead_kernel_benchmark(
            epochs=epochs,
            seed=seed,
            batch_size=batch_size,
            weight_decay=weight_decay,
            rel_threshold=rel,
            abs_threshold=abs_threshold,
            threads=threads,
            limit=limit,
            progress=progress,
        )
    if json_out:
        print_json(result)
        return
    typer.echo(f"dead depthwise kernels after {epochs} epochs on digits ({result['rule']}):")
    for name, r in result["models"].items():
        typer.echo(
            f"  {name:<18} {r['dead']:>4}/{r['total']:<5} = {100 * r['fraction']:.2f}%  "
            f"train acc {r['train_acc']:.1f}%  {r['seconds']:.1f}s"
        )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``dscmr vision ...`` and ``dscmr bench dead-kernels``."""
    app.add_typer(vision_app, name="vision")
    bench_app.command("dead-kernels")(cli_errors(bench_dead_kernels))
