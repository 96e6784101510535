"""``dscmr serve`` (the search service and its page) and ``dscmr bench serve``."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json
from dscmr.cli.export import ENGINE_HELP, run_with_engine


def parse_clients(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> ``(1, 4, 16)``."""
    from dscmr.errors import UsageError

    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--clients takes comma-separated counts such as 1,4,16, got {text!r}") from None
    if not out:
        raise UsageError("--clients needs at least one count, e.g. 1,4,16")
    return out


@cli_errors
def serve_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder the bundles were built with."),
    index: list[Path] = typer.Option(..., "--index", help="Bundle folder to serve (repeat for several)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    token: str | None = typer.Option(
        None, "--token", envvar="DSCMR_TOKEN", help="Require Authorization: Bearer TOKEN on every request."
    ),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="Largest image upload, in MB."),
    max_k: int = typer.Option(1000, "--max-k", help="Largest k a request may ask for."),
    engine: str | None = typer.Option(None, "--engine", help=ENGINE_HELP),
    threads: int = typer.Option(1, "--threads", help="torch / FAISS threads per request (requests run in parallel)."),
    max_encodes: int = typer.Option(
        0, "--max-encodes", help="Text / image queries encoded at once; the rest wait (0: cores / --threads)."
    ),
    verify: bool = typer.Option(False, "--verify", help="Check every bundle file's SHA-256 at each load and reload."),
) -> None:
    """Serve search over HTTP: a page at / and a JSON API at /api/v1 (docs at /docs)."""
    from dscmr.errors import UsageError
    from dscmr.serve.server import check_bind

    check_bind(host, token)  # before loading anything
    if not 0 < max_upload_mb <= 1024 or max_k < 1:
        raise UsageError("--max-upload-mb must be in (0, 1024] and --max-k at least 1")
    from dscmr.serve.limits import Limits
    from dscmr.serve.server import serve

    limits = Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_k=max_k)
    serve(run_with_engine(run, engine), list(index), host=host, port=port, token=token, limits=limits,
          threads=threads, max_encodes=max_encodes, verify=verify, say=typer.echo)  # fmt: skip


@cli_errors
def bench_serve_cmd(
    run: Path = typer.Option(..., "--run", help="Run folder."),
    index: list[Path] = typer.Option(..., "--index", help="Bundle folder to serve (repeat for several)."),
    clients: str = typer.Option("1,4,16", "--clients", help="Concurrent clients, comma-separated."),
    seconds: float = typer.Option(20.0, "--seconds", help="Seconds per (kind, clients) row."),
    max_requests: int = typer.Option(100_000, "--max-requests", help="Requests per row at most."),
    kinds: str = typer.Option("text,id,image", "--kinds", help="Query kinds to measure."),
    metric: str | None = typer.Option(None, "--metric", help="Metric of the queries (where a bundle has it)."),
    engine: str | None = typer.Option(None, "--engine", help="The server's query encoder engine (torch, onnx, ...)."),
    synthetic: int = typer.Option(
        0, "--synthetic", help="First write a bundle of this many synthetic embeddings at the first --index."
    ),
    synthetic_float: str = typer.Option("Flat", "--synthetic-float", help="Float index factory of --synthetic."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Queries per second and latency of `dscmr serve` over loopback HTTP (text, id and image queries)."""
    from dscmr.serve.bench import bench_serve, synthetic_bundle

    counts = parse_clients(clients)
    if synthetic:
        synthetic_bundle(run, index[0], n=synthetic, float_factory=synthetic_float)
    res = bench_serve(
        run, list(index), clients=counts, seconds=seconds, max_requests=max_requests,
        kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), metric=metric, engine=engine,
    )  # fmt: skip
    if json_out:
        print_json(res)
        return
    typer.echo(
        f"{'kind':6s} {'metric':8s} {'clients':>7s} {'qps':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}  rss MB"
    )
    for r in res["results"]:
        typer.echo(
            f"{r['kind']:6s} {r['metric']:8s} {r['clients']:7d} {r['qps']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
            f"{r['errors']:6d}  {r['rss_mb_start']:.0f} -> {r['rss_mb_end']:.0f}"
        )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``serve`` and ``bench serve``."""
    app.command("serve")(serve_cmd)
    bench_app.command("serve")(bench_serve_cmd)
