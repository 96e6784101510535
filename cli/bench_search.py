"""``dscmr bench search`` (index speed, recall and size) and ``dscmr bench hashing`` (binary vs float mAP)."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json


def _ints(text: str, what: str) -> tuple[int, ...]:
    from dscmr.errors import UsageError

    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


@cli_errors
def bench_search_cmd(
    n: int = typer.Option(100_000, "--n", help="Database size."),
    dim: int = typer.Option(128, "--dim", help="Vector dimension."),
    bits: str = typer.Option("64", "--bits", help="Code lengths of BFlat and hybrid (comma-separated)."),
    factory: list[str] = typer.Option([], "--factory", help="Float ANN factory (repeatable) [HNSW32, IVF1024,Flat]."),
    hash_method: str = typer.Option("itq", "--hash", help="Codes for BFlat / hybrid: sign or itq."),
    nq: int = typer.Option(200, "--nq", help="Queries (single-query latency and recall)."),
    ef_construction: int = typer.Option(40, "--ef-construction", help="HNSW efConstruction."),
    ef_search: str = typer.Option("16,32,64,128", "--ef-search", help="HNSW efSearch values to report."),
    nprobe: str = typer.Option("8,16,32,64", "--nprobe", help="IVF nprobe values to report."),
    shortlist: str = typer.Option("100,200,500,1000", "--shortlist", help="Hybrid shortlist lengths k'."),
    run: Path | None = typer.Option(None, "--run", help="Draw vectors around this run's embeddings."),
    threads: int = typer.Option(1, "--threads", help="FAISS / torch threads (latency is per this many)."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved timing rounds over all configurations."),
    seed: int = typer.Option(0, "--seed", help="Data seed."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Build Flat, ANN float indexes, BFlat and hybrid over N vectors; report build time, latency, recall, size."""
    from dscmr.benchmarks.search import search_benchmark

    report = search_benchmark(
        n,
        dim,
        threads=threads,
        run=run,
        factories=tuple(factory),
        bits=_ints(bits, "--bits"),
        hash_method=hash_method,
        nq=nq,
        seed=seed,
        ef_construction=ef_construction,
        ef_search=_ints(ef_search, "--ef-search"),
        nprobe=_ints(nprobe, "--nprobe"),
        shortlists=_ints(shortlist, "--shortlist"),
        rounds=rounds,
    )
    if json_out:
        print_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"search benchmark: n={n}, d={dim}, {report['threads']} thread(s), nq={nq}")
    for col in ("index", "params", "recall@10", "p50 ms", "p99 ms", "batch ms/q", "build s", "bytes/item"):
        table.add_column(col, justify="left" if col in ("index", "params") else "right")
    for r in report["results"]:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        table.add_row(
            r["index"], params, f"{r['recall_at_10']:.4f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
            f"{r['batch_ms_per_query']:.4f}", f"{r['build_seconds']:.1f}", f"{r['bytes_per_item']:.1f}",
        )  # fmt: skip
    Console().print(table)


@cli_errors
def bench_hashing_cmd(
    config: Path = typer.Option(Path("configs/wikipedia.toml"), "--config", "-c", help="Experiment TOML file."),
    bits: str = typer.Option("16,32,64,128", "--bits", help="Code lengths."),
    methods: str = typer.Option("sign,itq,learned", "--methods", help="Hash methods."),
    epochs: int = typer.Option(40, "--epochs", help="Training epochs of each model."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: section.key=value (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the runs [default: runs/bench-hashing-<config>]."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Binary 16/32/64/128-bit mAP next to float mAP, for sign, itq and learned codes."""
    from dscmr.benchmarks.hashing import METHODS, bench_hashing
    from dscmr.config import load_config
    from dscmr.errors import UsageError

    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise UsageError(f"--methods must be a comma-separated subset of {', '.join(METHODS)}, got {methods!r}")
    cfg = load_config(config, set_)
    report = bench_hashing(
        cfg,
        out or Path("runs") / f"bench-hashing-{config.stem}",
        bits=_ints(bits, "--bits"),
        methods=names,
        epochs=epochs,
    )
    if json_out:
        print_json(report)
        return
    f = report["float"]
    typer.echo(f"float mAP: img->txt {f['img2txt']:.4f}  txt->img {f['txt2img']:.4f}  avg {f['avg']:.4f}")
    for r in report["results"]:
        typer.echo(
            f"{r['method']:8s} {r['bits']:4d} bits  img->txt {r['img2txt']:.4f}  txt->img {r['txt2img']:.4f}  "
            f"avg {r['avg']:.4f}  ({r['ratio']:.1%} of float)"
        )


@cli_errors
def bench_memory_cmd(
    n: int = typer.Option(1_000_000, "--n", help="Items of the synthetic bundle."),
    dim: int = typer.Option(128, "--dim", help="Vector dimension."),
    bits: int = typer.Option(64, "--bits", help="ITQ code length of the binary index."),
    nq: int = typer.Option(1000, "--nq", help="Single queries per metric (hybrid, then cosine)."),
    bundle: Path | None = typer.Option(None, "--bundle", help="Measure this bundle instead of a synthetic one."),
    metric: list[str] = typer.Option([], "--metric", help="Metric to query (repeatable) [hybrid, cosine]."),
    seed: int = typer.Option(0, "--seed", help="Data seed."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """RSS after loading a bundle and after NQ queries, memory-mapped and in RAM, against its size on disk."""
    from dscmr.benchmarks.bundle_memory import bench_bundle_memory

    report = bench_bundle_memory(
        n,
        dim,
        bits=bits,
        nq=nq,
        seed=seed,
        bundle=bundle,
        metrics=tuple(metric) or ("hybrid", "cosine"),
    )
    if json_out:
        print_json(report)
        return
    typer.echo(f"bundle: {report['n']} x {report['dim']}, {report['disk_bytes'] / 2**20:.0f} MiB on disk")
    for r in report["results"]:
        for step, v in r["steps"].items():
            grow, anon = v["rss_growth_mb"], v["anon_growth_mb"]
            typer.echo(f"mmap={r['mmap']!s:5s} {step:18s} RSS +{grow:8.1f} MiB  anon +{anon:8.1f} MiB")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``bench search``, ``bench hashing`` and ``bench memory``."""
    bench_app.command("search")(bench_search_cmd)
    bench_app.command("hashing")(bench_hashing_cmd)
    bench_app.command("memory")(bench_memory_cmd)
