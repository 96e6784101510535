"""``dscmr search text`` and ``dscmr search image``: query an index bundle with a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dscmr.cli._common import cli_errors, print_json

_ID_HELP = "Use the features of this dataset item as the query (feature-mode runs)."
_METRIC_HELP = "cosine (float index), hamming (binary index) or hybrid [default: the bundle's first]."


def _search(
    modality: str,
    query: str | None,
    *,
    run: Path,
    index: Path,
    k: int,
    metric: str | None,
    query_id: str | None,
    shortlist: int | None,
    ef_search: int | None,
    nprobe: int | None,
    json_out: bool,
) -> None:
    from dscmr.errors import QueryError
    from dscmr.indexing.arrays import check_k
    from dscmr.indexing.retriever import Retriever

    check_k(k)
    if query_id is None and (query is None or not query.strip()):
        what = "text" if modality == "text" else "image path"
        raise QueryError(f"empty query: pass a {what} or --query-id ID")
    if query_id is not None and query is not None:
        raise QueryError("pass either a query or --query-id, not both")
    r = Retriever(run, index)
    r.expect_query_modality(modality)
    params = {k_: v for k_, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None}
    if params:
        if r.bundle.float_index is None:
            raise QueryError(f"{index} has no float index to apply --ef-search/--nprobe to")
        r.bundle.float_index.set_params(**params)
    kwargs: dict[str, Any] = {"k": k, "metric": metric, "shortlist": shortlist}
    if query_id is not None:
        hits = r.search_ids([query_id], **kwargs)[0]
        shown = {"id": query_id}
    elif modality == "text":
        assert query is not None
        hits = r.search_texts([query], **kwargs)[0]
        shown = {"text": query}
    else:
        assert query is not None
        hits = r.search_images([query], **kwargs)[0]
        shown = {"image": query}
    used = metric or r.default_metric()
    if json_out:
        print_json({"query": shown, "metric": used, "hits": [h.to_dict() for h in hits]})
        return
    from rich.console import Console
    from rich.table import Table

    label = "distance" if used == "hamming" else "score"
    table = Table(title=f"{used} search of {r.bundle.path} ({r.bundle.modality}s) for {next(iter(shown.values()))}")
    table.add_column("rank", justify="right")
    table.add_column(label, justify="right")
    table.add_column("id", justify="right")
    table.add_column("path" if r.bundle.modality == "image" else "text", overflow="fold")
    for h in hits:
        table.add_row(str(h.rank), str(h.score) if used == "hamming" else f"{h.score:.4f}", str(h.id), h.item)
    Console().print(table)


@cli_errors
def search_text_cmd(
    query: str | None = typer.Argument(None, help="Query sentence (omit with --query-id)."),
    run: Path = typer.Option(..., "--run", help="Run folder the bundle was built with."),
    index: Path = typer.Option(..., "--index", help="Bundle folder of images (`dscmr index build --modality image`)."),
    k: int = typer.Option(10, "-k", "--k", help="Number of results."),
    metric: str | None = typer.Option(None, "--metric", help=_METRIC_HELP),
    query_id: str | None = typer.Option(None, "--query-id", help=_ID_HELP),
    shortlist: int | None = typer.Option(None, "--shortlist", help="Hybrid Hamming shortlist k' [default: 10 k]."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW efSearch."),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF nprobe."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Search images with a text query."""
    _search(
        "text", query, run=run, index=index, k=k, metric=metric, query_id=query_id, shortlist=shortlist,
        ef_search=ef_search, nprobe=nprobe, json_out=json_out,
    )  # fmt: skip


@cli_errors
def search_image_cmd(
    path: str | None = typer.Argument(None, help="Query image file (omit with --query-id)."),
    run: Path = typer.Option(..., "--run", help="Run folder the bundle was built with."),
    index: Path = typer.Option(..., "--index", help="Bundle folder of texts (`dscmr index build --modality text`)."),
    k: int = typer.Option(10, "-k", "--k", help="Number of results."),
    metric: str | None = typer.Option(None, "--metric", help=_METRIC_HELP),
    query_id: str | None = typer.Option(None, "--query-id", help=_ID_HELP),
    shortlist: int | None = typer.Option(None, "--shortlist", help="Hybrid Hamming shortlist k' [default: 10 k]."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW efSearch."),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF nprobe."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
) -> None:
    """Search texts with an image query."""
    _search(
        "image", path, run=run, index=index, k=k, metric=metric, query_id=query_id, shortlist=shortlist,
        ef_search=ef_search, nprobe=nprobe, json_out=json_out,
    )  # fmt: skip


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``search text`` and ``search image``."""
    search_app = typer.Typer(help="Search an index bundle with a text or an image.", no_args_is_help=True)
    search_app.command("text")(search_text_cmd)
    search_app.command("image")(search_image_cmd)
    app.add_typer(search_app, name="search")
