"""``dscmr bench eval``: speed of the vectorised mAP against a per-query Python loop."""

from __future__ import annotations

import os

import typer

from dscmr.cli._common import cli_errors, print_json


@cli_errors
def bench_eval_cmd(
    n: int = typer.Option(5000, "--n", help="Queries and database items."),
    dim: int = typer.Option(1024, "--dim", help="Embedding dimension."),
    loop_queries: int = typer.Option(100, "--loop-queries", help="Queries per timed loop run (extrapolated)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed runs of each method; the medians are compared."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0 = default)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Time mAP@all at N x N: vectorised and chunked vs. a per-query Python loop."""
    import torch

    from dscmr.benchmarks.map_speed import benchmark_map
    from dscmr.errors import UsageError

    if n < 2 or dim < 1 or loop_queries < 1 or repeats < 1:
        raise UsageError("--n must be >= 2; --dim, --loop-queries and --repeats >= 1")
    if threads > 0:
        torch.set_num_threads(threads)
    res = benchmark_map(n=n, dim=dim, loop_queries=loop_queries, repeats=repeats)
    res["threads"] = torch.get_num_threads()
    # numpy's CPU dispatch decides which sort runs; on AMD Zen 4 its AVX-512 sort is several times slower than AVX2.
    res["numpy_disabled_cpu_features"] = os.environ.get("NPY_DISABLE_CPU_FEATURES", "")
    if json_out:
        print_json(res)
        return
    typer.echo(
        f"mAP@all {n}x{n} (d={dim}, medians of {repeats}): vectorised {res['vectorised_seconds']:.3f} s, "
        f"per-query loop ~{res['loop_seconds_extrapolated']:.1f} s -> {res['speedup']:.0f}x faster "
        f"(max AP difference {res['max_abs_diff_vs_loop']:.1e})"
    )


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``bench eval``."""
    bench_app.command("eval")(bench_eval_cmd)
