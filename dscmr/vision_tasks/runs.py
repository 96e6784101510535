"""Run-folder helpers shared by the vision tasks: seeding, progress callbacks, atomic weight files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dscmr.errors import CheckpointError
from dscmr.train.run_dir import RunDir
from dscmr.train.seed import seed_everything as seed_everything  # the one seeding function, re-exported
from dscmr.utils.io import atomic_write_with
from dscmr.utils.progress import Progress
from dscmr.utils.progress import no_progress as no_progress  # re-exported for the vision tasks

#: ``progress(done, total, description)``: the library's one progress protocol (:mod:`dscmr.utils.progress`).
ProgressFn = Progress

#: The weights file of a run folder (owned by :class:`dscmr.train.RunDir`).
WEIGHTS_FILE = RunDir.MODEL


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads (0 leaves the default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def save_weights(model: nn.Module, folder: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state dict as the run folder's weights file atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_with(RunDir(folder).model, lambda p: save_file(state, str(p), metadata=metadata or {}))


def save_metrics(metrics: dict[str, Any], folder: str | Path) -> Path:
    """Write the run folder's metrics file atomically."""
    return RunDir(folder).write_metrics(metrics)


def read_run_config(folder: str | Path) -> dict[str, Any]:
    """The resolved config of a run folder, as a JSON object.

    Raises:
        CheckpointError: The folder has no readable saved config.
    """
    run = RunDir(folder)
    if not run.config_json.is_file():
        raise CheckpointError(f"{folder} is not a run folder (no {run.CONFIG_JSON}); pass a run folder or weights file")
    return run.read_config_dict()


def shared_data_dir() -> Path:
    """The shared data folder: ``$DSCMR_SHARED_DATA`` if set, else ``../shared/data`` next to the
    repository.
    """
    import os

    env = os.environ.get("DSCMR_SHARED_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
