"""One search request, served: check it against the limits, encode the query with the run, search the current
version of a bundle, and describe the hits (class names, whether they share a class with the query)."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from dscmr.errors import QueryError, UsageError
from dscmr.indexing.retriever import METRICS, Hit, query_features
from dscmr.serve.limits import Limits
from dscmr.serve.state import LoadedBundle, ServeState
from dscmr.serve.thumbnails import check_image_bytes


@dataclass
class Query:
    """A parsed search request: exactly one of ``texts`` (one or a batch), ``image`` (bytes) or ``id``."""

    texts: list[str] | None = None
    image: bytes | None = None
    id: str | None = None
    batch: bool = False
    bundle: str | None = None
    k: int = 10
    metric: str | None = None
    shortlist: int | None = None

    @property
    def modality(self) -> str | None:
        """The query's modality (None for ids, which take the bundle's query modality)."""
        if self.texts is not None:
            return "text"
        return "image" if self.image is not None else None


def check_query(q: Query, limits: Limits) -> None:
    """Raise a one-line :class:`UsageError` / :class:`QueryError` for anything over a limit or malformed."""
    if not 1 <= q.k <= limits.max_k:
        raise UsageError(f"k must be between 1 and {limits.max_k}, got {q.k}")
    if q.shortlist is not None and not q.k <= q.shortlist <= limits.max_shortlist:
        raise UsageError(f"shortlist must be between k ({q.k}) and {limits.max_shortlist}, got {q.shortlist}")
    if q.metric is not None and q.metric not in METRICS:
        raise UsageError(f"unknown metric {q.metric!r}; use one of {', '.join(METRICS)}")
    if q.texts is not None:
        if not q.texts:
            raise QueryError("texts is empty; send at least one sentence")
        if len(q.texts) > limits.max_batch:
            raise UsageError(f"a batch holds at most {limits.max_batch} texts, got {len(q.texts)}")
        for t in q.texts:
            if not t.strip():
                raise QueryError("empty query text; send a non-empty sentence")
            if len(t) > limits.max_text_chars:
                raise UsageError(f"a query text holds at most {limits.max_text_chars} characters, got {len(t)}")
    if q.id is not None and not q.id.strip():
        raise QueryError("empty id; send the id of a dataset item")
    if q.id is not None and len(q.id) > limits.max_text_chars:
        raise UsageError(f"an id holds at most {limits.max_text_chars} characters, got {len(q.id)}")


def _encode(state: ServeState, lb: LoadedBundle, q: Query) -> Any:
    """Query model inputs -> raw common-space embeddings ``(nq, D)``; texts and images on the encoder threads."""
    r = lb.retriever
    if q.id is not None:  # a row of the dataset: no encoder runs
        return r.embed(query_features(state.run, r.query_modality, query_ids=[q.id], dataset=lb.dataset()))
    if q.texts is not None:
        texts = q.texts
        return state.encode(lambda: r.embed(query_features(state.run, "text", texts=texts)))
    assert q.image is not None
    fd, path = tempfile.mkstemp(prefix="dscmr-query-", suffix=".img")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(q.image)
        return state.encode(lambda: r.embed(query_features(state.run, "image", image_paths=[path])))
    finally:
        os.unlink(path)


def _describe(lb: LoadedBundle, hit: Hit, query_labels: tuple[int, ...] | None) -> dict[str, Any]:
    shares = None if query_labels is None or hit.labels is None else bool(set(query_labels) & set(hit.labels))
    out = hit.to_dict()
    image = lb.modality == "image" and bool(lb.roots)
    out.update(
        item=lb.public_item(hit.item),
        labels=list(hit.labels) if hit.labels is not None else None,
        classes=lb.class_names(hit.labels),
        shares_class=shares,
        thumbnail=f"/api/v1/items/{lb.name}/{hit.id}/thumbnail" if image else None,
    )
    return out


def run_query(state: ServeState, q: Query, limits: Limits) -> dict[str, Any]:
    """Answer one request (see :mod:`dscmr.serve.app` for the JSON shape)."""
    check_query(q, limits)
    lb = state.for_query(q.modality, q.bundle)  # this version serves the whole request
    if q.modality is not None:
        lb.retriever.expect_query_modality(q.modality)
    if q.metric is not None and q.metric not in lb.retriever.bundle.metrics:
        have = ", ".join(lb.retriever.bundle.metrics)
        raise UsageError(f"bundle {lb.name!r} cannot answer metric {q.metric!r}; it supports {have}")
    if q.image is not None:
        check_image_bytes(q.image, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels)
    t0 = time.perf_counter()
    xq = _encode(state, lb, q)
    t1 = time.perf_counter()
    k = min(q.k, lb.retriever.bundle.count)  # a k past the bundle's size returns every item
    hits = lb.retriever.search_embeddings(xq, k=k, metric=q.metric, shortlist=q.shortlist)
    t2 = time.perf_counter()
    queries: list[dict[str, Any]]
    if q.texts is not None:
        queries = [{"text": t} for t in q.texts]
        labels = [lb.query_labels("text", t) for t in q.texts]
    elif q.id is not None:
        queries = [{"id": q.id}]
        labels = [lb.query_labels(lb.query_modality, q.id)]
    else:
        queries, labels = [{"image": f"upload ({len(q.image or b'')} bytes)"}], [None]
    results = [
        {"query": qd, "classes": lb.class_names(ql), "hits": [_describe(lb, h, ql) for h in hs]}
        for qd, ql, hs in zip(queries, labels, hits, strict=True)
    ]
    out: dict[str, Any] = {
        "bundle": lb.name,
        "version": lb.version,
        "modality": lb.modality,
        "metric": q.metric or lb.retriever.default_metric(),
        "k": q.k,
        "results": results,
        "timing_ms": {"encode": round((t1 - t0) * 1e3, 3), "search": round((t2 - t1) * 1e3, 3)},
    }
    if not q.batch:
        out["hits"] = results[0]["hits"]
    out["timing_ms"]["total"] = round((time.perf_counter() - t0) * 1e3, 3)
    return out
