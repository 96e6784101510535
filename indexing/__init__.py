"""FAISS float and binary indexes, hashing, index bundles on disk and the retrieval layer.

Example:
    >>> from dscmr.indexing import BuildSpec, Retriever, build_from_run
    >>> build_from_run("runs/wiki", "bundles/wiki-img", modality="image", spec=BuildSpec(binary="itq", bits=64))
    >>> hits = Retriever("runs/wiki", "bundles/wiki-img").search_ids(["<text id>"], k=5, metric="hybrid")[0]
"""

from __future__ import annotations

from dscmr.indexing.binary_index import BinaryIndex
from dscmr.indexing.build import BuildSpec, add_to_bundle, build_bundle
from dscmr.indexing.bundle import FORMAT_VERSION, IndexBundle, ItemRecord, load_bundle
from dscmr.indexing.float_index import FloatIndex
from dscmr.indexing.from_run import add_from_run, build_from_run
from dscmr.indexing.hashing import (
    HASH_METHODS,
    LinearHasher,
    fit_hasher,
    fit_itq,
    fit_sign,
    hamming_codes,
    pack_codes,
    unpack_codes,
)
from dscmr.indexing.hybrid import hybrid_search, rerank
from dscmr.indexing.manifest import Manifest
from dscmr.indexing.retriever import METRICS, Hit, Query, Retriever, SearchResult, query_features

__all__ = [
    "FORMAT_VERSION",
    "HASH_METHODS",
    "METRICS",
    "BinaryIndex",
    "BuildSpec",
    "FloatIndex",
    "Hit",
    "IndexBundle",
    "ItemRecord",
    "LinearHasher",
    "Manifest",
    "Query",
    "Retriever",
    "SearchResult",
    "add_from_run",
    "add_to_bundle",
    "build_bundle",
    "build_from_run",
    "fit_hasher",
    "fit_itq",
    "fit_sign",
    "hamming_codes",
    "hybrid_search",
    "load_bundle",
    "pack_codes",
    "query_features",
    "rerank",
    "unpack_codes",
]
