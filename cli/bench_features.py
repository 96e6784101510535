"""``dscmr bench features``: frozen image features per backbone and preprocessing (linear probe, LR-baseline mAP)."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json


def _settings(items: list[str]) -> tuple[tuple[str, str], ...]:
    from dscmr.benchmarks.features import DEFAULT_SETTINGS
    from dscmr.config import IMAGE_FIT_CHOICES, IMAGE_VIEWS_CHOICES
    from dscmr.errors import UsageError

    out = []
    for item in items:
        fit, _, views = item.partition(":")
        if fit not in IMAGE_FIT_CHOICES or (views or "one") not in IMAGE_VIEWS_CHOICES:
            raise UsageError(
                f"--setting must be FIT[:VIEWS] with FIT in {', '.join(IMAGE_FIT_CHOICES)} and VIEWS in "
                f"{', '.join(IMAGE_VIEWS_CHOICES)}, got {item!r}"
            )
        out.append((fit, views or "one"))
    return tuple(out) or DEFAULT_SETTINGS


@cli_errors
def bench_features_cmd(
    config: Path | None = typer.Option(None, "--config", help="Take data.root, image_size, text_model from here."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Folder dataset with train and val records."),
    backbone: list[str] = typer.Option([], "--backbone", help="Image backbone (repeatable) [all four]."),
    setting: list[str] = typer.Option([], "--setting", help="FIT[:VIEWS], e.g. pad:flip (repeatable)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Input side [data.image_size; 0 = own]."),
    threads: int = typer.Option(1, "--threads", help="torch and BLAS threads."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Encode a folder dataset's train + val images per backbone and preprocessing; report the encoding time, a
    linear probe's val accuracy and the logistic-regression retrieval baseline's val mAP."""
    import torch
    from threadpoolctl import threadpool_limits

    from dscmr.benchmarks.features import DEFAULT_BACKBONES, bench_features
    from dscmr.config import DataConfig, load_config
    from dscmr.errors import UsageError

    data = load_config(config).data if config else DataConfig(root="../shared/data/pascal_sentence")
    root = data_root or Path(data.root)
    if threads <= 0:
        raise UsageError("--threads must be positive")
    settings = _settings(setting)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):  # numpy's and sklearn's BLAS too
            report = bench_features(
                root,
                backbones=tuple(backbone) or DEFAULT_BACKBONES,
                settings=settings,
                image_size=data.image_size if image_size is None else image_size,
                text_model=data.text_model,
                threads=threads,
                cache_dir=data.cache_dir,
            )
    finally:
        torch.set_num_threads(before)
    if json_out:
        print_json(report.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    title = f"frozen features on {root}: {report.n_train} train / {report.n_val} val, {threads} thread(s)"
    table = Table(title=title, caption=f"text probe accuracy {report.text_probe_accuracy:.3f} ({report.text_model})")
    for col in ("backbone", "size", "fit", "views", "encode s", "cpu s", "probe acc", "C", "LR mAP i2t", "t2i", "avg"):
        table.add_column(col, justify="left" if col in ("backbone", "fit", "views") else "right")
    for r in report.rows:
        m = r.lr_map
        table.add_row(
            r.backbone, str(r.image_size), r.fit, r.views, f"{r.encode_seconds:.1f}", f"{r.encode_cpu_seconds:.1f}",
            f"{r.probe_accuracy:.3f}",
            f"{r.probe_c:g}", f"{m['img2txt']:.4f}", f"{m['txt2img']:.4f}", f"{m['avg']:.4f}",
        )  # fmt: skip
    Console().print(table)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``bench features``."""
    bench_app.command("features")(bench_features_cmd)
