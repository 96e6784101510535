"""``dscmr index build`` and ``dscmr index add``: write and extend index bundles."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from dscmr.cli._common import cli_errors, print_json

_DATA_HELP = "A TOML config, or a data path read with the run's data config [default: the run's own data]."


@contextlib.contextmanager
def build_progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr fed by the builders' ``(stage, done, total)`` callback."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int) -> None:
        key = stage.split(" (")[0]
        if key not in tasks:
            tasks[key] = bar.add_task(stage, total=total)
        bar.update(tasks[key], completed=done, total=total, description=stage)

    with bar:
        yield update


def _summary(bundle: Any) -> dict[str, Any]:
    m = bundle.manifest
    return {
        "bundle": str(bundle.path),
        "modality": m["modality"],
        "count": m["count"],
        "dim": m["dim"],
        "metrics": list(bundle.metrics),
        "float": m["float"]["factory"] if m.get("float") else None,
        "binary": (
            {"method": m["binary"]["method"], "bits": m["binary"]["bits"], "factory": m["binary"]["factory"]}
            if m.get("binary")
            else None
        ),
        "bytes": sum(f["bytes"] for f in m["files"].values()),
    }


def _print_summary(s: dict[str, Any], verb: str) -> None:
    parts = [f"{verb} {s['bundle']}: {s['count']} {s['modality']}s, {s['dim']}-d"]
    if s["float"]:
        parts.append(f"float {s['float']}")
    if s["binary"]:
        b = s["binary"]
        parts.append(f"binary {b['method']} {b['bits']} bits {b['factory']}")
    typer.echo(", ".join(parts) + f"; metrics {', '.join(s['metrics'])}; {s['bytes'] / 1e6:.2f} MB")


@cli_errors
def build_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder written by `dscmr train`."),
    modality: str = typer.Option(..., "--modality", help="What to index: image or text."),
    out: Path = typer.Option(..., "--out", help="Bundle folder (an existing bundle is replaced atomically)."),
    data: str | None = typer.Option(None, "--data", help=_DATA_HELP),
    float_factory: str | None = typer.Option(
        None, "--float", help="FAISS float index factory (Flat, HNSW32, IVF1024,Flat, IVF1024,PQ32) [default: Flat]."
    ),
    binary: str | None = typer.Option(None, "--binary", help="Also build a binary hash index: sign, itq or learned."),
    bits: int | None = typer.Option(None, "--bits", help="Code length (multiple of 8) [default: 64; learned: run's]."),
    binary_factory: str = typer.Option("BFlat", "--binary-factory", help="BFlat, BHNSW32, BIVF256, ..."),
    no_float: bool = typer.Option(False, "--no-float", help="Binary index only (no float index; hybrid still works)."),
    no_vectors: bool = typer.Option(False, "--no-vectors", help="Do not keep float vectors for hybrid re-ranking."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW efSearch stored with the index."),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF nprobe stored with the index."),
    split: str = typer.Option("test", "--split", help="Dataset split to index: train, val or test."),
    seed: int = typer.Option(0, "--seed", help="Seed of training samples and projections."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Encode one modality of a dataset split with a run and write an index bundle."""
    from dscmr.errors import QueryError
    from dscmr.indexing.build import BuildSpec
    from dscmr.indexing.from_run import as_run, build_from_run, check_modality

    check_modality(modality)
    if no_float and binary is None:
        raise QueryError("--no-float needs --binary METHOD")
    run_ = as_run(run)
    if bits is None:
        bits = run_.model.hash_bits if binary == "learned" and run_.model.hash_bits else 64
    params = tuple((k, float(v)) for k, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None)
    spec = BuildSpec(
        float_factory=None if no_float else (float_factory or "Flat"),
        binary=binary,
        bits=bits,
        binary_factory=binary_factory,
        seed=seed,
        float_params=params,
        keep_vectors=not no_vectors,
    )
    with build_progress(not json_out) as progress:
        bundle = build_from_run(run_, out, modality=modality, data=data, split=split, spec=spec, progress=progress)
    s = _summary(bundle)
    if json_out:
        print_json(s)
    else:
        _print_summary(s, "built")


@cli_errors
def add_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="Existing bundle folder."),
    run: Path = typer.Option(..., "--run", help="The run the bundle was built with."),
    data: str | None = typer.Option(None, "--data", help=_DATA_HELP),
    split: str = typer.Option("test", "--split", help="Dataset split to add: train, val or test."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Append a dataset split to a bundle without retraining its indexes (atomic, like build)."""
    from dscmr.indexing.from_run import add_from_run

    with build_progress(not json_out) as progress:
        b = add_from_run(bundle, run, data=data, split=split, progress=progress)
    s = _summary(b)
    if json_out:
        print_json(s)
    else:
        _print_summary(s, "extended")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``index build`` and ``index add``."""
    index_app = typer.Typer(help="Build and extend FAISS index bundles.", no_args_is_help=True)
    index_app.command("build")(build_cmd)
    index_app.command("add")(add_cmd)
    app.add_typer(index_app, name="index")
