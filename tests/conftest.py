"""Shared fixtures: the shared data folder (skip when absent) and a tiny synthetic feature dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DSCMR_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; skips the test, naming the path, when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.fixture
def wikipedia_root() -> Path:
    return shared_path("wikipedia")


def make_clustered_features(
    n: int, num_classes: int, *, img_dim: int = 16, txt_dim: int = 8, seed: int = 0, noise: float = 0.8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired features whose class structure is learnable: class centres plus noise in each modality."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    ci = rng.normal(size=(num_classes, img_dim))
    ct = rng.normal(size=(num_classes, txt_dim))
    img = ci[labels] + noise * rng.normal(size=(n, img_dim))
    txt = ct[labels] + noise * rng.normal(size=(n, txt_dim))
    return img.astype(np.float32), txt.astype(np.float32), labels


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A 240-pair, 4-class ``.npz`` feature dataset with train/val/test splits."""
    img, txt, labels = make_clustered_features(240, 4)
    split = np.array(["train"] * 160 + ["val"] * 30 + ["test"] * 50)
    path = tmp_path / "tiny.npz"
    np.savez(path, img=img, txt=txt, labels=labels, split=split)
    return path


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_npz: Path) -> Path:
    """A small, fast TOML config on :func:`tiny_npz`."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f"""
[data]
format = "npz"
root = "{tiny_npz}"

[model]
img_hidden = [32]
txt_hidden = [32]
common_dim = 16

[train]
epochs = 6
batch_size = 32
lr = 3e-3
patience = 0
checkpoint_every = 1
threads = 1
"""
    )
    return cfg


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test, restored after (``pytestmark = usefixtures(...)`` per module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
