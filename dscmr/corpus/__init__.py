"""Corpus encoding: a raw dataset -> a features folder of sharded encoder features, in-process or on Ray.

Example:
    >>> from dscmr.config import DataConfig
    >>> from dscmr.corpus import encode_corpus
    >>> result = encode_corpus(DataConfig(format="digits"), "features/digits", ray="local")  # doctest: +SKIP
    >>> result.items_per_second  # doctest: +SKIP

Train on the result with ``data.format = "features_dir"`` and ``data.root = "features/digits"``.
"""

from __future__ import annotations

from dscmr.corpus.encode import DEFAULT_SHARD_SIZE, Corpus, EncodeResult, encode_corpus, read_corpus
from dscmr.corpus.shards import ShardEncoder, ShardTask, plan_shards

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "Corpus",
    "EncodeResult",
    "ShardEncoder",
    "ShardTask",
    "encode_corpus",
    "plan_shards",
    "read_corpus",
]
