"""``dscmr search text`` and ``dscmr search image``: query an index bundle with a trained run."""

from __future__ import annotations

from pathlib import Path

import typer

from dscmr.cli._common import cli_errors, print_json
from dscmr.cli.export import ENGINE_HELP, run_with_engine

_ID_HELP = "Use the features of this dataset item as the query (feature-mode runs)."
_K_HELP = "Number of results (capped at the bundle's size)."
_VERIFY_HELP = "Check every bundle file's SHA-256 against the manifest before searching."
_SERVER_HELP = (
    "Send the query to a running `dscmr serve` at this URL (warm; --index names the bundle by its folder name; "
    "token from $DSCMR_TOKEN)."
)
_METRIC_HELP = "cosine (float index), hamming (binary index) or hybrid [default: the bundle's first]."


def _search(
    modality: str,
    query: str | None,
    *,
    run: Path | None,
    index: Path,
    k: str,
    metric: str | None,
    query_id: str | None,
    shortlist: int | None,
    ef_search: int | None,
    nprobe: int | None,
    json_out: bool,
    verify: bool = False,
    engine: str | None = None,
    server: str | None = None,
) -> None:
    if server:
        _remote(server, modality, query, index=index, k=k, metric=metric, query_id=query_id, shortlist=shortlist,
                json_out=json_out)  # fmt: skip
        return
    if run is None:
        from dscmr.errors import UsageError

        raise UsageError("--run is required (or send the query to a running server with --server URL)")
    from dscmr.indexing.retriever import Query, search

    result, r = search(
        run_with_engine(run, engine), index, Query.from_args(modality, query, query_id=query_id), k=k,
        metric=metric, shortlist=shortlist, ef_search=ef_search, nprobe=nprobe, verify=verify,
    )  # fmt: skip
    if json_out:
        print_json(result.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    used = result.metric
    label = "distance" if used == "hamming" else "score"
    shown = next(iter(result.query.to_dict().values()))
    table = Table(title=f"{used} search of {r.bundle.path} ({r.bundle.modality}s) for {shown}")
    table.add_column("rank", justify="right")
    table.add_column(label, justify="right")
    table.add_column("id", justify="right")
    table.add_column("path" if r.bundle.modality == "image" else "text", overflow="fold")
    for h in result.hits:
        table.add_row(str(h.rank), str(h.score) if used == "hamming" else f"{h.score:.4f}", str(h.id), h.item)
    Console().print(table)


def _remote(server: str, modality: str, query: str | None, *, index: Path, k: str, metric: str | None,
            query_id: str | None, shortlist: int | None, json_out: bool) -> None:  # fmt: skip
    """``--server``: the query goes to a running ``dscmr serve`` (bundle = the --index folder's name)."""
    from dscmr.errors import UsageError
    from dscmr.serve.client import remote_search

    if not k.strip().isdigit():
        raise UsageError(f"-k must be a positive whole number, got {k!r}")
    res = remote_search(
        server, modality=modality, query=query, query_id=query_id, bundle=index.name, k=int(k), metric=metric,
        shortlist=shortlist,
    )  # fmt: skip
    if json_out:
        print_json(res)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{res['metric']} search of {res['bundle']} on {server} ({res['timing_ms']['total']:.1f} ms)")
    for col in ("rank", "score", "id", "classes", "item"):
        table.add_column(col, justify="right" if col in ("rank", "score", "id") else "left", overflow="fold")
    for h in res["hits"]:
        table.add_row(str(h["rank"]), str(h["score"]), str(h["id"]), ", ".join(h["classes"]), h["item"])
    Console().print(table)


@cli_errors
def search_text_cmd(
    query: str | None = typer.Argument(None, help="Query sentence (omit with --query-id)."),
    run: Path | None = typer.Option(None, "--run", help="Run folder the bundle was built with (not with --server)."),
    index: Path = typer.Option(..., "--index", help="Bundle folder of images (`dscmr index build --modality image`)."),
    k: str = typer.Option("10", "-k", "--k", metavar="INTEGER", help=_K_HELP),
    metric: str | None = typer.Option(None, "--metric", help=_METRIC_HELP),
    query_id: str | None = typer.Option(None, "--query-id", help=_ID_HELP),
    shortlist: int | None = typer.Option(None, "--shortlist", help="Re-rank shortlist k' [default: bundle's]."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW efSearch."),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF nprobe."),
    verify: bool = typer.Option(False, "--verify", help=_VERIFY_HELP),
    engine: str | None = typer.Option(None, "--engine", help=ENGINE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
    server: str | None = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Search images with a text query."""
    _search(
        "text", query, run=run, index=index, k=k, metric=metric, query_id=query_id, shortlist=shortlist,
        ef_search=ef_search, nprobe=nprobe, json_out=json_out, verify=verify, engine=engine, server=server,
    )  # fmt: skip


@cli_errors
def search_image_cmd(
    path: str | None = typer.Argument(None, help="Query image file (omit with --query-id)."),
    run: Path | None = typer.Option(None, "--run", help="Run folder the bundle was built with (not with --server)."),
    index: Path = typer.Option(..., "--index", help="Bundle folder of texts (`dscmr index build --modality text`)."),
    k: str = typer.Option("10", "-k", "--k", metavar="INTEGER", help=_K_HELP),
    metric: str | None = typer.Option(None, "--metric", help=_METRIC_HELP),
    query_id: str | None = typer.Option(None, "--query-id", help=_ID_HELP),
    shortlist: int | None = typer.Option(None, "--shortlist", help="Re-rank shortlist k' [default: bundle's]."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW efSearch."),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF nprobe."),
    verify: bool = typer.Option(False, "--verify", help=_VERIFY_HELP),
    engine: str | None = typer.Option(None, "--engine", help=ENGINE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
    server: str | None = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Search texts with an image query."""
    _search(
        "image", path, run=run, index=index, k=k, metric=metric, query_id=query_id, shortlist=shortlist,
        ef_search=ef_search, nprobe=nprobe, json_out=json_out, verify=verify, engine=engine, server=server,
    )  # fmt: skip


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``search text`` and ``search image``."""
    search_app = typer.Typer(help="Search an index bundle with a text or an image.", no_args_is_help=True)
    search_app.command("text")(search_text_cmd)
    search_app.command("image")(search_image_cmd)
    app.add_typer(search_app, name="search")
