"""``dscmr encode``: a raw corpus -> a features folder (``data.format = "features_dir"``), in-process or on Ray."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json

_RAY_HELP = (
    "Encode in Ray actors: 'local' (a local cluster of this machine's CPUs), 'auto' (the cluster started with "
    "`ray start`), or a cluster address. Without it, encode in this process."
)


@cli_errors
def encode_cmd(
    config: Path = typer.Option(
        ..., "--config", "-c", help="TOML config; its data section names the dataset and the encoders."
    ),
    out: Path = typer.Option(..., "--out", help="Features folder to write (a rerun finishes or updates it)."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder; overrides the config."),
    ray: str | None = typer.Option(None, "--ray", help=_RAY_HELP),
    workers: int = typer.Option(0, "--workers", help="Ray actors (0 = the cluster's CPUs / --threads)."),
    threads: int = typer.Option(0, "--threads", help="torch threads per worker (0 = CPUs / workers)."),
    batch_size: int = typer.Option(0, "--batch-size", help="Inputs per encoder call (0 = 32 images, 64 texts)."),
    shard_size: int = typer.Option(1024, "--shard-size", help="Rows per feature shard (the unit of work and resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: section.key=value (repeatable)."),
    engine: str | None = typer.Option(None, "--engine", help="Encoder engine: torch, onnx or onnx-int8 (data.engine)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (counts, items/s), nothing else."),
) -> None:
    """Encode a folder or built-in dataset's images and texts once into feature shards plus a manifest."""
    from dscmr.config import load_config
    from dscmr.corpus import encode_corpus

    cfg = load_config(config, list(set_) + ([f'data.engine="{engine}"'] if engine is not None else []))
    result = encode_corpus(
        cfg.data,
        out,
        data_root=data_root,
        ray=ray,
        workers=workers,
        threads=threads,
        batch_size=batch_size,
        shard_size=shard_size,
    )
    if json_out:
        print_json(result.to_dict())
        return
    typer.echo(
        f"{result.out}: {result.records} pairs, {result.images} images, {result.texts} texts in {result.shards} "
        f"shards ({result.computed} encoded, {result.reused} kept)"
    )
    if result.computed:
        typer.echo(
            f"{result.mode}, {result.workers} worker(s) x {result.threads} thread(s): "
            f"{result.items_per_second:.1f} items/s ({result.encode_seconds:.1f} s encoding)"
        )
    typer.echo(f'train on it with: --set data.format=features_dir --set data.root="{result.out}"')


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``encode``."""
    app.command("encode")(encode_cmd)
