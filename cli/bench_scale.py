"""``dscmr bench scale``: sharded against unsharded index builds and memory-mapped serving, on synthetic vectors."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json

_RAY_HELP = "Fill the sharded builds' shards as Ray tasks: 'local' (this machine), 'auto' or a cluster address."


@cli_errors
def bench_scale_cmd(
    n: int = typer.Option(1_000_000, "--n", help="Vectors (generated a slice at a time)."),
    dim: int = typer.Option(128, "--dim", help="Vector dimension (a multiple of 4)."),
    shards: int = typer.Option(4, "--shards", help="Shards of the sharded builds."),
    ray: str | None = typer.Option(None, "--ray", help=_RAY_HELP),
    queries: int = typer.Option(1000, "--queries", help="Single queries for p50 and recall@10."),
    kind: list[str] = typer.Option([], "--kind", help="Index kind (repeatable) [IVF-Flat, IVF-PQ, BFlat-64]."),
    threads: int = typer.Option(1, "--threads", help="FAISS threads of the in-process builds."),
    encode: bool = typer.Option(
        True, "--encode/--no-encode", help="Also time `dscmr encode` in-process vs 2 Ray workers."
    ),
    workdir: Path | None = typer.Option(None, "--workdir", help="Folder for the bundles [default: a temporary one]."),
    seed: int = typer.Option(0, "--seed", help="Data seed."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Build IVF-Flat, IVF-PQ and BFlat-64 sharded and unsharded; report build time, peak RSS, disk, p50, recall."""
    from dscmr.benchmarks.scale import KINDS, bench_scale

    report = bench_scale(
        n, dim, shards=shards, ray=ray, queries=queries, kinds=tuple(kind) or KINDS, seed=seed, threads=threads,
        encode=encode, workdir=workdir,
    )  # fmt: skip
    if json_out:
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"scale: n={n}, d={dim}, {shards} shards{', Ray ' + ray if ray else ''}, {queries} queries")
    for col in ("index", "shards", "build s", "peak RSS MiB", "disk MiB", "serve RSS MiB", "p50 ms", "recall@10"):
        table.add_column(col, justify="left" if col == "index" else "right")
    for r in report["results"]:
        table.add_row(
            r["index"], str(r["shards"]), f"{r['build_seconds']:.1f}", f"{r['peak_rss_mb']:.0f}",
            f"{r['disk_bytes'] / 2**20:.1f}", f"{r['serve_rss_mb']:.0f}", f"{r['p50_ms']:.3f}",
            f"{r['recall_at_10']:.4f}",
        )  # fmt: skip
    Console().print(table)
    for name, e in (report["encode"] or {}).items():
        if isinstance(e, dict):
            typer.echo(f"encode {name}: " + (e["error"] if "error" in e else f"{e['items_per_second']} items/s"))


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``bench scale``."""
    bench_app.command("scale")(bench_scale_cmd)
