"""Run-folder helpers shared by the vision tasks: seeding, progress callbacks, atomic weight files."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dscmr.errors import CheckpointError
from dscmr.utils.io import atomic_write_json, atomic_write_with

#: ``progress(done, total, description)``; the CLI draws a rich progress bar from it.
ProgressFn = Callable[[int, int, str], None]

WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


def no_progress(done: int, total: int, description: str) -> None:
    """Progress callback that does nothing."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded with ``seed`` for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 leaves the default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def save_weights(model: nn.Module, folder: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state dict as ``folder/model.safetensors`` atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_with(Path(folder) / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata=metadata or {}))


def save_metrics(metrics: dict[str, Any], folder: str | Path) -> Path:
    """Write ``folder/metrics.json`` atomically."""
    return atomic_write_json(Path(folder) / METRICS_FILE, metrics)


def read_run_config(folder: str | Path) -> dict[str, Any]:
    """The resolved config (``config.json``) of a run folder.

    Raises:
        CheckpointError: The folder has no readable ``config.json``.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a run folder (no config.json); pass a run folder or weights file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a config object")
    return data


def shared_data_dir() -> Path:
    """The shared data folder: ``$DSCMR_SHARED_DATA`` if set, else ``../shared/data`` next to the
    repository.
    """
    import os

    env = os.environ.get("DSCMR_SHARED_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
