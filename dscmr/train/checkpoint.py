"""Model checkpoints: the selected weights as safetensors plus their ``model.json`` description, and loading a
finished run.

The run folder's layout is owned by :class:`dscmr.train.RunDir`; the network's description by
:class:`dscmr.models.DSCMRSpec`. Every file is written atomically; weights are read with safetensors only (never
unpickled), and a run is validated as it loads: its config, its model description, its weights and whether they
belong together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file, save_file

from dscmr.config import Config
from dscmr.errors import CheckpointError
from dscmr.models import DSCMR, RetrievalModel, spec_from_dict
from dscmr.train.run_dir import RunDir
from dscmr.utils.io import atomic_write_with


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors as safetensors."""
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_with(path, lambda p: save_file(clean, str(p), metadata=metadata))


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file and its string metadata, with a clear error when it is missing or corrupt."""
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        return tensors, dict(fh.metadata() or {})


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, with a clear error when it is missing or corrupt."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-run training") from None


def _load_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a safetensors file and the SHA-256 of exactly the bytes they were read from."""
    try:
        data = path.read_bytes()
        return load_safetensors_bytes(data), hashlib.sha256(data).hexdigest()
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({first}); re-run training") from None


def model_meta(model: RetrievalModel, *, class_names: list[str] | None = None, data_format: str = "") -> dict[str, Any]:
    """The ``model.json`` description of ``model``: its spec (:class:`~dscmr.models.DSCMRSpec`, or
    :class:`~dscmr.models.EnsembleSpec` for a seed ensemble) plus the run facts it was trained on."""
    return {**model.spec.to_dict(), "class_names": class_names, "data_format": data_format}


def save_model(
    run: RunDir, model: RetrievalModel, meta: dict[str, Any], state: dict[str, torch.Tensor] | None = None
) -> None:
    """Write the weights (``state`` or the model's current ones) and their description into the run folder."""
    save_tensors(run.model, state if state is not None else model.state_dict())
    run.write_model_meta(meta)


@dataclass
class LoadedRun:
    """A trained run, ready to encode: the eval-mode model, its config and its recorded metrics.

    Attributes:
        run_dir: The run folder.
        config: Its resolved config.
        model: The validation-selected network (or seed ensemble of networks), in eval mode.
        meta: ``model.json`` (the model's spec plus class names and data format).
        metrics: ``metrics.json``.
        checkpoint_sha256: SHA-256 of the weights as loaded; index bundles record it to detect a model mismatch.
    """

    run_dir: Path
    config: Config
    model: RetrievalModel
    meta: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_sha256: str


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load and validate a run folder written by :func:`dscmr.train.train`.

    Raises:
        CheckpointError: The folder or one of its files is missing, unreadable or damaged, or its files do not
            belong together (weights vs ``model.json``, ``model.json`` vs the saved config).
    """
    run = RunDir(run_dir)
    run.check_folder()
    for path in (run.model, run.model_meta, run.config_json):
        if not path.is_file():
            raise CheckpointError(f"{run} is not a finished run: {path.name} is missing; train it or --resume it")
    meta = run.read_model_meta()
    spec = spec_from_dict(meta, source=str(run.model_meta))
    cfg = run.load_config(Config)
    trained_on = meta.get("data_format")
    if trained_on and trained_on != cfg.data.format:
        raise CheckpointError(
            f"{run.config_json} names data.format {cfg.data.format!r}, but the model was trained on "
            f"{trained_on!r}; the run folder was edited, re-run training"
        )
    metrics = run.read_metrics()
    model = spec.build()
    state, sha256 = _load_weights(run.model)
    if isinstance(model, DSCMR):  # runs saved before the retrieval centre existed
        state.setdefault("center", torch.zeros(model.embed_dim))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{run.model} does not match {run.MODEL_META} ({first})") from None
    model.eval()
    return LoadedRun(run.path, cfg, model, meta, metrics, sha256)


# ----------------------------------------------------------------------------------------------------------------
# Optimizer state as safetensors + JSON


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
