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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dscmr.config import DataConfig, from_dict
from dscmr.data import FeatureDataset, load_dataset
from dscmr.errors import QueryError
from dscmr.indexing.arrays import check_k
from dscmr.indexing.bundle import IndexBundle, load_bundle
from dscmr.indexing.from_run import as_run
from dscmr.indexing.hybrid import hybrid_search
from dscmr.train import LoadedRun

METRICS = ("cosine", "hamming", "hybrid")
OTHER = {"image": "text", "text": "image"}


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

    def __init__(self, run: LoadedRun | str | Path, bundle: IndexBundle | str | Path) -> None:
        self.run = as_run(run)
        sha = self.run.checkpoint_sha256
        if isinstance(bundle, IndexBundle):
            from dscmr.indexing.bundle import check_run

            check_run(bundle.manifest, sha, path=bundle.path)
            self.bundle = bundle
        else:
            self.bundle = load_bundle(bundle, checkpoint_sha256=sha)
        if int(self.run.model.embed_dim) != self.bundle.dim:
            from dscmr.errors import IndexBundleError

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
        sources = self.bundle.manifest.get("sources") or []
        if sources and "data" in sources[0]:
            return from_dict(DataConfig, sources[0]["data"], source=f"{self.bundle.path} manifest")
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
            shortlist: Hybrid shortlist length k' (default 10 * k).
        """
        check_k(k)
        metric = metric or self.default_metric()
        if metric not in METRICS:
            raise QueryError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if metric not in self.bundle.metrics:
            have = ", ".join(self.bundle.metrics)
            raise QueryError(f"{self.bundle.path} cannot answer --metric {metric} (it supports {have}); rebuild it")
        b = self.bundle
        if metric == "cosine":
            assert b.float_index is not None
            D, I = b.float_index.search(xq, k)
        else:
            assert b.binary_index is not None and b.hasher is not None
            codes = b.hasher.encode(xq)
            if metric == "hamming":
                D, I = b.binary_index.search(codes, k)
            else:
                assert b.vectors is not None
                D, I = hybrid_search(b.binary_index, b.vectors, codes, xq, k, shortlist=shortlist)
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
