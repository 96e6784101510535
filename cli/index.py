"""``dscmr index build``, ``dscmr index add`` and ``dscmr index info``: write, extend and check index bundles."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from dscmr.cli._common import cli_errors, print_json
from dscmr.cli.export import ENGINE_HELP, run_with_engine
from dscmr.utils.progress import current_progress

_VERIFY_HELP = "Check every bundle file's SHA-256 against the manifest (build: the result; add: before adding)."
_DATA_HELP = "A TOML config, or a data path read with the run's data config [default: the run's own data]."
_SHARDS_HELP = (
    "Build a sharded bundle of N shards: train once, fill each shard with a slice of the items, search them "
    "together with an exact merge (docs/scale.md)."
)
_RAY_HELP = "With --shards: fill the shards as Ray tasks on 'local' (this machine), 'auto' or a cluster address."


@contextlib.contextmanager
def build_progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """The builders' ``(stage, done, total)`` callback, drawn by the CLI's one renderer (:mod:`dscmr.cli._progress`).

    ``indexing`` still reports stage first; this adapts it to ``progress(done, total, description)``.
    """
    if not enabled:
        yield None
        return
    report = current_progress()
    yield lambda stage, done, total: report(done, total, stage)


def _print_summary(s: dict[str, Any], verb: str) -> None:
    parts = [f"{verb} {s['bundle']}: {s['count']} {s['modality']}s, {s['dim']}-d"]
    if s["float"]:
        parts.append(f"float {s['float']}")
    if s["binary"]:
        b = s["binary"]
        parts.append(f"binary {b['method']} {b['bits']} bits {b['factory']}")
    if s.get("shards"):
        parts.append(f"{len(s['shards'])} shards ({', '.join(map(str, s['shards']))} items)")
    typer.echo(", ".join(parts) + f"; metrics {', '.join(s['metrics'])}; {s['bytes'] / 1e6:.2f} MB")
    names = {"shortlist": "hybrid shortlist", "nprobe": "nprobe", "refine": "re-rank top"}
    used = [f"{names[k]} {v}" for k, v in s.get("search", {}).items() if k in names and v is not None]
    if used:
        typer.echo(f"search defaults for k = 10: {', '.join(used)}")


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
    no_vectors: bool = typer.Option(False, "--no-vectors", help="No float vectors (no hybrid, no PQ re-rank)."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW efSearch stored with the index."),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF nprobe stored with the index."),
    split: str = typer.Option("test", "--split", help="Dataset split to index: train, val or test."),
    seed: int = typer.Option(0, "--seed", help="Seed of training samples and projections."),
    verify: bool = typer.Option(False, "--verify", help=_VERIFY_HELP),
    engine: str | None = typer.Option(None, "--engine", help=ENGINE_HELP),
    shards: int | None = typer.Option(None, "--shards", help=_SHARDS_HELP),
    ray: str | None = typer.Option(None, "--ray", help=_RAY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Encode one modality of a dataset split with a run and write an index bundle."""
    from dscmr.indexing.from_run import build_from_options

    run = run_with_engine(run, engine)

    with build_progress(not json_out) as progress:
        bundle = build_from_options(
            run, out, modality=modality, data=data, split=split, progress=progress, verify=verify,
            float_factory=float_factory, no_float=no_float, binary=binary, bits=bits, binary_factory=binary_factory,
            no_vectors=no_vectors, ef_search=ef_search, nprobe=nprobe, seed=seed, shards=shards, ray=ray,
        )  # fmt: skip
    s = bundle.summary()
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
    verify: bool = typer.Option(False, "--verify", help=_VERIFY_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Append a dataset split to a bundle without retraining its indexes (atomic, like build)."""
    from dscmr.indexing.from_run import add_from_run

    with build_progress(not json_out) as progress:
        b = add_from_run(bundle, run, data=data, split=split, progress=progress, verify=verify)
    s = b.summary()
    if json_out:
        print_json(s)
    else:
        _print_summary(s, "extended")


@cli_errors
def info_cmd(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder."),
    verify: bool = typer.Option(False, "--verify", help="Also check every file's SHA-256 against the manifest."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Load a bundle with every check (and its file hashes with --verify) and summarise it."""
    from dscmr.indexing.bundle import load_bundle

    s = load_bundle(bundle, verify=verify).summary()
    if json_out:
        print_json(s)
    else:
        _print_summary(s, "verified" if verify else "checked")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``index build``, ``index add`` and ``index info``."""
    index_app = typer.Typer(help="Build and extend FAISS index bundles.", no_args_is_help=True)
    index_app.command("build")(build_cmd)
    index_app.command("add")(add_cmd)
    index_app.command("info")(info_cmd)
    app.add_typer(index_app, name="index")
