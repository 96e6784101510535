"""A tiny folder corpus, the real encoders (64-px MobileNetV2, all-MiniLM-L6-v2) and its in-process encoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.encoders.helpers import TEST_IMAGE_SIZE, small_records, write_folder

SHARD_SIZE = 5  # 12 images -> 3 image shards, 16 texts -> 4 text shards


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine more threads spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images, 16 captions, explicit splits."""
    records, images = small_records()
    return write_folder(tmp_path_factory.mktemp("corpus") / "data", records, images=images)


@pytest.fixture(scope="session")
def data_cfg(corpus_root: Path, tmp_path_factory: pytest.TempPathFactory):
    from dscmr.config import DataConfig

    cache = tmp_path_factory.mktemp("cache")
    return DataConfig(format="folder", root=str(corpus_root), image_size=TEST_IMAGE_SIZE, cache_dir=str(cache))


@pytest.fixture
def config_file(tmp_path: Path, data_cfg) -> Path:
    """A TOML config whose [data] is :func:`data_cfg`."""
    path = tmp_path / "encode.toml"
    path.write_text(
        f'[data]\nformat = "folder"\nroot = "{data_cfg.root}"\nimage_size = {data_cfg.image_size}\n'
        f'cache_dir = "{data_cfg.cache_dir}"\n'
    )
    return path


@pytest.fixture
def make_encoder(data_cfg):
    """A fresh in-process :class:`ShardEncoder` for a folder (it records which shards it encodes)."""
    from dscmr.corpus import ShardEncoder

    return lambda out: ShardEncoder.from_config(out, data_cfg)


@pytest.fixture(scope="session")
def encoded(data_cfg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus encoded in-process once (read-only: copy it before changing anything)."""
    from dscmr.corpus import encode_corpus

    out = tmp_path_factory.mktemp("encoded") / "features"
    encode_corpus(data_cfg, out, shard_size=SHARD_SIZE)
    return out


@pytest.fixture
def encoded_copy(encoded: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`encoded`."""
    return Path(shutil.copytree(encoded, tmp_path / "features"))
