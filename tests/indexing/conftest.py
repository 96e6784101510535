"""Fixtures for the indexing tests: a tiny trained run (feature mode) and seeded clustered vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dscmr.config import load_config


def make_tiny_run(tmp: Path, *, epochs: int = 4) -> Path:
    """Train a DSCMR run for a few epochs on a synthetic 240-pair npz in ``tmp``; return the run folder.

    The npz (``tmp/tiny.npz``) splits 160 / 30 / 50 pairs into train / val / test.
    """
    from dscmr.train import train
    from tests.conftest import make_clustered_features

    img, txt, labels = make_clustered_features(240, 4)
    split = np.array(["train"] * 160 + ["val"] * 30 + ["test"] * 50)
    npz = tmp / "tiny.npz"
    np.savez(npz, img=img, txt=txt, labels=labels, split=split)
    cfg_path = tmp / "tiny.toml"
    cfg_path.write_text(
        f"""
[data]
format = "npz"
root = "{npz}"

[model]
img_hidden = [32]
txt_hidden = [32]
common_dim = 16

[train]
epochs = {epochs}
batch_size = 32
lr = 3e-3
patience = 0
checkpoint_every = 10
threads = 1
"""
    )
    torch.set_num_threads(1)
    run_dir = tmp / "run"
    train(load_config(cfg_path), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DSCMR run trained for a few epochs on a synthetic 240-pair npz (shared by the tests of a session)."""
    return make_tiny_run(tmp_path_factory.mktemp("indexing_run"))


@pytest.fixture
def clustered() -> np.ndarray:
    """2000 + 50 seeded clustered 32-d vectors (the last 50 are queries)."""
    from dscmr.benchmarks.search import clustered_embeddings

    return clustered_embeddings(2050, 32, seed=3)
