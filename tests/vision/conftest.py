"""Fixtures of the vision tests: the shared data folder, the CLI app, tiny synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """``$DSCMR_SHARED_DATA`` or ``../shared/data`` relative to the repository root."""
    env = os.environ.get("DSCMR_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture
def denoise_data() -> Path:
    """The shared denoising data folder (skips when absent)."""
    path = shared_data() / "denoise"
    if not (path / "Set12").is_dir():
        pytest.skip(f"shared denoising data not found at {path / 'Set12'}")
    return path


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def app() -> typer.Typer:
    """The full ``dscmr`` app."""
    from dscmr.cli.main import app as main_app

    return main_app


@pytest.fixture
def runner() -> CliRunner:
    """A Typer CLI runner."""
    return CliRunner()


@pytest.fixture
def hsi_files(tmp_path: Path) -> tuple[Path, Path]:
    """A 12x12x20 synthetic cube with 3 spectrally distinct classes (.npy) and its ground truth."""
    rng = np.random.default_rng(0)
    gt = np.zeros((12, 12), dtype=np.int64)
    gt[1:5, 1:11] = 1
    gt[6:8, 1:11] = 2
    gt[9:11, 2:10] = 3
    spectra = rng.normal(size=(4, 20)).astype(np.float32) * 3
    cube = spectra[gt] + 0.3 * rng.normal(size=(12, 12, 20)).astype(np.float32)
    np.save(tmp_path / "cube.npy", cube)
    np.save(tmp_path / "gt.npy", gt)
    return tmp_path / "cube.npy", tmp_path / "gt.npy"


@pytest.fixture
def gray_images(tmp_path: Path) -> Path:
    """A folder of two smooth 48x48 grayscale PNGs."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    for i, arr in enumerate([0.5 + 0.4 * np.sin(6 * xx) * yy, 0.2 + 0.6 * xx * (1 - yy)]):
        Image.fromarray((arr * 255).astype(np.uint8), mode="L").save(folder / f"img{i}.png")
    return folder
