"""``dscmr export onnx``: a trained run's query paths as ONNX graphs (see docs/onnx.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dscmr.cli._common import cli_errors, print_json

ENGINE_HELP = "Encoder engine: auto, torch, onnx or onnx-int8 (ONNX Runtime; docs/onnx.md) [default: the run's]."


def run_with_engine(run: Path, engine: str | None) -> Any:
    """``run`` itself without ``--engine``; otherwise the loaded run set to encode raw inputs with ``engine``."""
    if engine is None:
        return run
    from dscmr.encoders.engine import check_engine, with_engine
    from dscmr.train import load_run

    check_engine(engine)
    return with_engine(load_run(run), engine)


@cli_errors
def export_onnx_cmd(
    run: Path = typer.Argument(..., help="Run folder written by `dscmr train` on a folder or built-in dataset."),
    out: Path = typer.Option(..., "--out", help="Export folder (an earlier export there is replaced)."),
    int8: bool = typer.Option(False, "--int8", help="Also write dynamically quantized int8 graphs."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as one JSON object, nothing else."),
) -> None:
    """Export a run's image and text query paths (encoder + DSCMR head) to ONNX, with a manifest."""
    from dscmr.export import export_onnx

    manifest = export_onnx(run, out, int8=int8)
    if json_out:
        print_json({"out": str(out), **manifest.to_dict()})
        return
    files = [manifest.image.file, manifest.text.file] + [
        f for f in (manifest.image.file_int8, manifest.text.file_int8) if f
    ]
    typer.echo(f"exported {run} -> {out}: {', '.join(files)}, {manifest.text.tokenizer}/, manifest.json")
    typer.echo(f"  image {manifest.image.image_size}px ({manifest.image.backbone}) and text -> {manifest.embed_dim}-d")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``export onnx``."""
    export_app = typer.Typer(help="Export a trained run for other runtimes.", no_args_is_help=True)
    export_app.command("onnx")(export_onnx_cmd)
    app.add_typer(export_app, name="export")
