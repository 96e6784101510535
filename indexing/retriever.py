"""The retrieval layer: a trained run plus an index bundle -> ranked hits for text or image queries.

A bundle indexes one modality; queries come from the other one (text queries search an image bundle, image
queries a text bundle). Query encoding goes through :func:`query_features`, the one place that knows how a run
turns a query into model inputs:

- **feature mode** (runs trained on precomputed benchmark features): only dataset items can be queries,
  by id (``--query-id``); their feature rows are looked up in the run's dataset.
- **raw mode** (runs trained on folder or built-in datasets): raw texts / image files go through
  ``dscmr.encoders.encode_queries`` with the run's own encoders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dscmr.config import DataConfig, from_dict
from dscmr.data import FeatureDataset, load_dataset
from dscmr.errors import IndexBundleError, QueryError, UsageError
from dscmr.indexing.arrays import check_k, parse_k
from dscmr.indexing.bundle import IndexBundle, check_run, load_bundle
from dscmr.indexing.from_run import as_run
from dscmr.indexing.hybrid import hybrid_search
from dscmr.train import LoadedRun

METRICS = ("cosine", "hamming", "hybrid")
OTHER = {"image": "text", "text": "image"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One ranked result.

    Attributes:
        rank: 1-based rank.
        id: Bundle id of the item.
        score: Cosine similarity (``cosine``, ``hybrid``; higher is better) or Hamming distance (``hamming``).
        item: The item's path, text or dataset id.
        labels: Class indices of the item, when known.
    """

    rank: int
    id: int
    score: float
    item: str
    labels: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "score": self.score, "item": self.item}


@dataclass(frozen=True)
class Query:
    """One search query, checked: a sentence, an image file, or the id of a dataset item.

    Attributes:
        modality: What the query is (``text`` or ``image``); the bundle searched holds the other modality.
        text: The sentence (text queries).
        image: The image file (image queries).
        item_id: A dataset item id of the query modality (feature-mode runs).
    """

    modality: str
    text: str | None = None
    image: str | None = None
    item_id: str | None = None

    @classmethod
    def from_args(cls, modality: str, query: str | None = None, *, query_id: str | None = None) -> Query:
        """The query of ``dscmr search MODALITY [QUERY] [--query-id ID]``.

        Raises:
            UsageError: An unknown modality, or both a query and an id.
            QueryError: No query, an empty one, or an empty id.
        """
        if modality not in OTHER:
            raise UsageError(f"the query modality must be text or image, got {modality!r}")
        if query_id is not None and query is not None:
            raise UsageError("pass either a query or --query-id, not both")
        if query_id is not None:
            if not str(query_id).strip():
                raise QueryError("empty --query-id; pass the id of a dataset item")
            return cls(modality, item_id=str(query_id))
        if query is None or not query.strip():
            what = "text" if modality == "text" else "image path"
            raise QueryError(f"empty query: pass a {what} or --query-id ID")
        return cls(modality, text=query) if modality == "text" else cls(modality, image=query)

    def to_dict(self) -> dict[str, str]:
        """``{"id": ...}``, ``{"text": ...}`` or ``{"image": ...}``."""
        if self.item_id is not None:
            return {"id": self.item_id}
        return {"text": str(self.text)} if self.modality == "text" else {"image": str(self.image)}


@dataclass(frozen=True)
class SearchResult:
    """The answer to one :class:`Query`.

    Attributes:
        query: The query.
        metric: The metric used.
        hits: Ranked hits (at most ``k``).
        k: Results asked for after capping at the bundle's size.
        k_requested: Results asked for.
    """

    query: Query
    metric: str
    hits: list[Hit] = field(default_factory=list)
    k: int = 0
    k_requested: int = 0

    @property
    def capped(self) -> bool:
        return self.k < self.k_requested

    def to_dict(self) -> dict[str, Any]:
        """What ``dscmr search --json`` prints."""
        return {
            "query": self.query.to_dict(),
            "metric": self.metric,
            "hits": [h.to_dict() for h in self.hits],
            "k": self.k,
            "k_requested": self.k_requested,
        }


def _find_feature_row(ds: FeatureDataset, modality: str, item_id: str) -> np.ndarray:
    for name in ("test", "val", "train"):
        sp = ds.split(name)
        names = sp.img_items if modality == "image" else sp.txt_items
        if names is None:
            continue
        try:
            row = names.index(item_id)
        except ValueError:
            continue
        return (sp.img if modality == "image" else sp.txt)[row]
    example = next((s for s in (ds.test.txt_items if modality == "text" else ds.test.img_items) or ()), None)
    hint = f" (e.g. {example!r})" if example else ""
    raise QueryError(f"no {modality} item with id {item_id!r} in the dataset; pass a dataset item id{hint}")


def query_features(
    run: LoadedRun,
    modality: str,
    *,
    texts: list[str] | None = None,
    image_paths: list[str] | None = None,
    query_ids: list[str] | None = None,
    dataset: FeatureDataset | None = None,
) -> np.ndarray:
    """Model inputs ``(nq, d_in)`` for queries of ``modality``: dataset ids, or raw texts / image files.

    Raises:
        QueryError: An empty query, an unreadable image, an unknown id, or raw queries for a feature-mode run.
    """
    if query_ids is not None:
        if not query_ids or any(not str(q).strip() for q in query_ids):
            raise QueryError("empty --query-id; pass the id of a dataset item")
        ds = dataset if dataset is not None else load_dataset(run.config.data)
        return np.stack([_find_feature_row(ds, modality, str(q)) for q in query_ids])
    if modality == "text":
        if not texts or any(not t.strip() for t in texts):
            raise QueryError("empty query text; pass a non-empty sentence (or --query-id ID)")
    else:
        if not image_paths:
            raise QueryError("no query image given; pass an image file (or --query-id ID)")
        for p in image_paths:
            if not str(p).strip():
                raise QueryError("empty image path; pass an image file (or --query-id ID)")
            if not Path(p).is_file():
                raise QueryError(f"cannot read image {p}: no such file; check the path")
    from dscmr.indexing.from_run import raw_formats

    if run.config.data.format not in raw_formats():
        raise QueryError(
            f"this run was trained on precomputed features (data.format={run.config.data.format!r}); "
            "use --query-id ID to query with a dataset item"
        )
    from dscmr.encoders import encode_queries

    return (
        encode_queries(run, texts=texts, image_paths=image_paths)
        if modality == "text"
        else encode_queries(run, image_paths=image_paths)
    )


class Retriever:
    """Search a bundle with queries encoded by the run it was built from.

    Args:
        run: A run folder or a loaded run.
        bundle: A bundle folder or a loaded bundle; its model hash must match the run's.

    Example:
        >>> r = Retriever("runs/wiki", "bundles/wiki-images")
        >>> hits = r.search_ids(["b3f0..."], k=5)[0]
    """

    def __init__(self, run: LoadedRun | str | Path, bundle: IndexBundle | str | Path, *, verify: bool = False) -> None:
        """Load the run and the bundle (``verify``: also check every bundle file's SHA-256)."""
        self.run = as_run(run)
        sha = self.run.checkpoint_sha256
        if isinstance(bundle, IndexBundle):
            check_run(bundle.manifest, sha, path=bundle.path)
            self.bundle = bundle
        else:
            self.bundle = load_bundle(bundle, checkpoint_sha256=sha, verify=verify)
        if int(self.run.model.embed_dim) != self.bundle.dim:
            raise IndexBundleError(
                f"{self.bundle.path} holds {self.bundle.dim}-d vectors, the run embeds in {self.run.model.embed_dim}-d"
            )
        self._dataset: FeatureDataset | None = None

    @property
    def query_modality(self) -> str:
        """Queries are of the modality the bundle does not hold."""
        return OTHER[self.bundle.modality]

    def default_metric(self) -> str:
        return self.bundle.metrics[0]

    def _data_config(self) -> DataConfig:
        sources = self.bundle.manifest.sources
        if sources and sources[0].data is not None:
            return from_dict(DataConfig, dict(sources[0].data), source=f"{self.bundle.path} manifest")
        return self.run.config.data

    def dataset(self) -> FeatureDataset:
        """The dataset queries by id are looked up in (the bundle's first source, loaded once)."""
        if self._dataset is None:
            self._dataset = load_dataset(self._data_config())
        return self._dataset

    @torch.no_grad()
    def embed(self, features: np.ndarray) -> np.ndarray:
        """Query model inputs -> raw common-space embeddings ``(nq, D)``."""
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        model = self.run.model
        u = model.encode_text(x) if self.query_modality == "text" else model.encode_image(x)
        return u.numpy()

    def search_embeddings(
        self, xq: np.ndarray, *, k: int = 10, metric: str | None = None, shortlist: int | None = None
    ) -> list[list[Hit]]:
        """Ranked hits for each row of raw query embeddings ``xq`` ``(nq, D)``.

        Args:
            xq: Query embeddings.
            k: Results per query.
            metric: ``cosine``, ``hamming`` or ``hybrid`` (default: the first the bundle supports).
            shortlist: Re-ranking shortlist k': hybrid, or a PQ / SQ float index's refine (default: the bundle's,
                sized from its count, code bits and factory).
        """
        metric = self.check_metric(metric)
        k = self.capped_k(k)
        b = self.bundle
        if k == 0:  # an empty bundle
            return [[] for _ in range(np.asarray(xq).reshape(-1, b.dim).shape[0])]
        if metric == "cosine":
            D, I = b.search_cosine(xq, k, shortlist=shortlist)
        else:
            assert b.binary_index is not None and b.hasher is not None
            codes = b.hasher.encode(xq)
            if metric == "hamming":
                D, I = b.binary_index.search(codes, k)
            else:
                assert b.vectors is not None
                kp = b.shortlist_for(k) if shortlist is None else shortlist
                D, I = hybrid_search(b.binary_index, b.vectors, codes, xq, k, shortlist=kp)
        out: list[list[Hit]] = []
        records = b.items(I)
        for q in range(I.shape[0]):
            hits: list[Hit] = []
            for j in range(I.shape[1]):
                rec = records[q * I.shape[1] + j]
                if I[q, j] < 0 or rec is None:
                    continue
                score = int(D[q, j]) if metric == "hamming" else round(float(D[q, j]), 6)
                hits.append(Hit(len(hits) + 1, int(I[q, j]), score, rec.item, rec.labels))
            out.append(hits)
        return out

    def check_metric(self, metric: str | None) -> str:
        """The metric to use (default: the bundle's first); it must be one the bundle can answer.

        Raises:
            QueryError: An unknown metric, or one this bundle was not built for.
        """
        metric = metric or self.default_metric()
        if metric not in METRICS:
            raise QueryError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if metric not in self.bundle.metrics:
            have = ", ".join(self.bundle.metrics)
            raise QueryError(f"{self.bundle.path} cannot answer --metric {metric} (it supports {have}); rebuild it")
        return metric

    def capped_k(self, k: int) -> int:
        """``k`` checked and capped at the bundle's size (a warning says so): no search allocates more rows than
        there are items.

        Raises:
            QueryError: ``k`` is not a positive whole number.
        """
        k = check_k(k)
        if k > self.bundle.count:
            logger.warning(
                "k=%d exceeds the %d items of %s; returning at most %d", k, self.bundle.count, self.bundle.path,
                self.bundle.count,
            )  # fmt: skip
            return self.bundle.count
        return k

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Set the float index's HNSW ``efSearch`` / IVF ``nprobe`` for the following searches.

        Raises:
            UsageError: The bundle has no float index, or the index has no such parameter.
        """
        params = {name: v for name, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None}
        if not params:
            return
        if self.bundle.float_index is None:
            raise UsageError(f"{self.bundle.path} has no float index to apply --ef-search/--nprobe to")
        self.bundle.float_index.set_params(**params)

    def search(
        self, query: Query, *, k: int = 10, metric: str | None = None, shortlist: int | None = None
    ) -> SearchResult:
        """Answer one query of any kind (text, image file or dataset id).

        Raises:
            QueryError: A query of the modality the bundle holds, an unknown id, an unreadable image, a bad k or
                metric.
        """
        self.expect_query_modality(query.modality)
        used = self.capped_k(k)
        kwargs: dict[str, Any] = {"k": used, "metric": metric, "shortlist": shortlist}
        if query.item_id is not None:
            hits = self.search_ids([query.item_id], **kwargs)[0]
        elif query.text is not None:
            hits = self.search_texts([query.text], **kwargs)[0]
        else:
            hits = self.search_images([str(query.image)], **kwargs)[0]
        return SearchResult(query, metric or self.default_metric(), hits, used, k)

    def search_ids(self, query_ids: list[str], **kwargs: Any) -> list[list[Hit]]:
        """Search with dataset items (feature mode): ids of the query modality."""
        feats = query_features(self.run, self.query_modality, query_ids=query_ids, dataset=self.dataset())
        return self.search_embeddings(self.embed(feats), **kwargs)

    def search_texts(self, texts: list[str], **kwargs: Any) -> list[list[Hit]]:
        """Search an image bundle with sentences (raw-mode runs)."""
        self.expect_query_modality("text")
        return self.search_embeddings(self.embed(query_features(self.run, "text", texts=texts)), **kwargs)

    def search_images(self, image_paths: list[str], **kwargs: Any) -> list[list[Hit]]:
        """Search a text bundle with image files (raw-mode runs)."""
        self.expect_query_modality("image")
        feats = query_features(self.run, "image", image_paths=[str(p) for p in image_paths])
        return self.search_embeddings(self.embed(feats), **kwargs)

    def expect_query_modality(self, modality: str) -> None:
        if self.query_modality != modality:
            raise QueryError(
                f"{self.bundle.path} indexes {self.bundle.modality}s, so its queries are {self.query_modality}s; "
                f"use `dscmr search {self.query_modality}` or a bundle built with --modality {OTHER[modality]}"
            )


def search(
    run: LoadedRun | str | Path,
    bundle: IndexBundle | str | Path,
    query: Query,
    *,
    k: int | str = 10,
    metric: str | None = None,
    shortlist: int | None = None,
    ef_search: int | None = None,
    nprobe: int | None = None,
    verify: bool = False,
) -> tuple[SearchResult, Retriever]:
    """``dscmr search``: check k, load the run and the bundle, and answer one query.

    Args:
        run: Run folder (or loaded run) the bundle was built with.
        bundle: Bundle folder (or loaded bundle).
        query: The query (:meth:`Query.from_args`).
        k: Results wanted (a string from the command line is parsed); capped at the bundle's size.
        metric: ``cosine``, ``hamming`` or ``hybrid`` (default: the bundle's first).
        shortlist: Hybrid shortlist length.
        ef_search: HNSW efSearch for this search.
        nprobe: IVF nprobe for this search.
        verify: Check every bundle file's SHA-256 first.

    Returns:
        The result, and the retriever (for the bundle's path and modality).
    """
    k_int = parse_k(k)
    r = Retriever(run, bundle, verify=verify)
    r.expect_query_modality(query.modality)
    r.set_search_params(ef_search=ef_search, nprobe=nprobe)
    return r.search(query, k=k_int, metric=metric, shortlist=shortlist), r
