"""Run folders: the best model as safetensors plus a JSON description, resumable training state, loading.

A run folder holds:

- ``config.toml`` / ``config.json``: the resolved config;
- ``model.safetensors``: weights of the validation-selected epoch (input standardisation included);
- ``model.json``: what is needed to rebuild the network (dimensions, classes, shape options);
- ``metrics.json``: validation-selected epoch, validation and test metrics, history, seed, timing;
- ``train_state.safetensors`` / ``train_state.json``: the state to ``--resume`` a killed run.

Every file is written atomically; weights are read with safetensors only (never unpickled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dscmr.config import Config, from_dict
from dscmr.errors import CheckpointError, ConfigError
from dscmr.models import DSCMR
from dscmr.utils.io import atomic_write_json, atomic_write_with, file_sha256

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
METRICS_FILE = "metrics.json"
STATE_FILE = "train_state.safetensors"
STATE_META = "train_state.json"


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


def build_model(meta: dict[str, Any]) -> DSCMR:
    """Rebuild a DSCMR network from its ``model.json`` description."""
    return DSCMR(
        meta["img_dim"],
        meta["txt_dim"],
        meta["num_classes"],
        img_hidden=tuple(meta["img_hidden"]),
        txt_hidden=tuple(meta["txt_hidden"]),
        common_dim=meta["common_dim"],
        dropout=meta.get("dropout", 0.0),
        hash_bits=meta.get("hash_bits", 0),
    )


def model_meta(model: DSCMR, cfg: Config, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``model.json`` description of ``model``."""
    meta = {
        "architecture": "dscmr",
        "img_dim": model.img_dim,
        "txt_dim": model.txt_dim,
        "num_classes": model.num_classes,
        "img_hidden": list(cfg.model.img_hidden),
        "txt_hidden": list(cfg.model.txt_hidden),
        "common_dim": cfg.model.common_dim,
        "dropout": cfg.model.dropout,
        "hash_bits": cfg.model.hash_bits,
    }
    meta.update(extra or {})
    return meta


def save_model(run_dir: Path, model: DSCMR, meta: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``model.safetensors`` (``state`` or the model's current weights) and ``model.json``."""
    save_tensors(run_dir / MODEL_FILE, state if state is not None else model.state_dict())
    atomic_write_json(run_dir / MODEL_META, meta)


@dataclass
class LoadedRun:
    """A trained run, ready to encode: the eval-mode model, its config and its recorded metrics."""

    run_dir: Path
    config: Config
    model: DSCMR
    meta: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def checkpoint_sha256(self) -> str:
        """SHA-256 of the weights file; index bundles record it to detect a model mismatch."""
        return file_sha256(self.run_dir / MODEL_FILE)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load a run folder written by :func:`dscmr.train.train`.

    Raises:
        CheckpointError: The folder or one of its files is missing or unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder not found: {run_dir}; pass the --out folder of `dscmr train`")
    for name in (MODEL_FILE, MODEL_META, "config.json"):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir} is not a finished run: {name} is missing; train it or --resume it")
    try:
        meta = json.loads((run_dir / MODEL_META).read_text())
        cfg_dict = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / METRICS_FILE).read_text()) if (run_dir / METRICS_FILE).is_file() else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{run_dir}: corrupt JSON ({exc}); re-run training") from None
    try:
        cfg = from_dict(Config, cfg_dict, source=str(run_dir / "config.json"))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(meta)
    state = load_tensors(run_dir / MODEL_FILE)
    state.setdefault("center", torch.zeros(model.embed_dim))  # runs saved before the retrieval centre existed
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{run_dir / MODEL_FILE} does not match model.json ({first})") from None
    model.eval()
    return LoadedRun(run_dir, cfg, model, meta, metrics)


# ----------------------------------------------------------------------------------------------------------------
# Resumable training state


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
