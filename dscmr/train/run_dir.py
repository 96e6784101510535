"""The run folder: one type owns its layout, so no other module spells its file names.

A run folder holds:

- ``config.toml`` / ``config.json``: the resolved config (TOML for people, JSON for programs);
- ``model.safetensors``: weights of the validation-selected epoch (input standardisation included);
- ``model.json``: what is needed to rebuild the network (:class:`dscmr.models.DSCMRSpec`, plus the class names
  and the data format it was trained on);
- ``metrics.json``: validation-selected epoch, validation and test metrics, history, seed, timing;
- ``train_state.safetensors`` / ``train_state.json``: the state to ``--resume`` a killed run;
- ``members/<j>/``: a seed ensemble's (``train.ensemble > 1``) member runs, each a run folder of this layout
  (:mod:`dscmr.train.ensemble`); the top-level ``model.*`` then hold the whole ensemble.

A run is *finished* once ``metrics.json`` exists (it is written last) and *resumable* while ``train_state.json``
(an ensemble: ``members/``) exists. The vision tasks (``dscmr vision ...``) write the same ``config.*``,
``model.safetensors`` and ``metrics.json`` files. Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dscmr.config import Config, apply_overrides, dumps_toml, from_dict, to_dict
from dscmr.errors import CheckpointError, ConfigError
from dscmr.utils.io import atomic_write_json, atomic_write_text

T = TypeVar("T")


@dataclass(frozen=True, init=False)
class RunDir:
    """The files of one run folder, and reading and writing its JSON files with clear errors.

    Attributes:
        path: The run folder.
    """

    path: Path

    CONFIG_TOML: ClassVar[str] = "config.toml"
    CONFIG_JSON: ClassVar[str] = "config.json"
    MODEL: ClassVar[str] = "model.safetensors"
    MODEL_META: ClassVar[str] = "model.json"
    METRICS: ClassVar[str] = "metrics.json"
    STATE: ClassVar[str] = "train_state.safetensors"
    STATE_META: ClassVar[str] = "train_state.json"
    MEMBERS: ClassVar[str] = "members"

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_toml(self) -> Path:
        """``config.toml``: the resolved config for people."""
        return self.path / self.CONFIG_TOML

    @property
    def config_json(self) -> Path:
        """``config.json``: the resolved config read back by programs."""
        return self.path / self.CONFIG_JSON

    @property
    def model(self) -> Path:
        """``model.safetensors``: the selected weights."""
        return self.path / self.MODEL

    @property
    def model_meta(self) -> Path:
        """``model.json``: how to rebuild the network."""
        return self.path / self.MODEL_META

    @property
    def metrics(self) -> Path:
        """``metrics.json``: written last, so its presence marks a finished run."""
        return self.path / self.METRICS

    @property
    def state(self) -> Path:
        """``train_state.safetensors``: tensors of the resumable training state."""
        return self.path / self.STATE

    @property
    def state_meta(self) -> Path:
        """``train_state.json``: counters, history and RNG state of the resumable training state."""
        return self.path / self.STATE_META

    @property
    def members(self) -> Path:
        """``members/``: a seed ensemble's member run folders."""
        return self.path / self.MEMBERS

    def member(self, index: int) -> RunDir:
        """The run folder of ensemble member ``index`` (``members/<index>``)."""
        return RunDir(self.members / str(index))

    @property
    def finished(self) -> bool:
        """Whether training finished here (``metrics.json`` exists)."""
        return self.metrics.is_file()

    @property
    def resumable(self) -> bool:
        """Whether a training state to ``--resume`` from exists (a seed ensemble's: its member folders)."""
        return self.state_meta.is_file() or self.members.is_dir()

    def create(self) -> None:
        """Create the folder (and its parents); an existing folder is fine."""
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"{self.path} is a file, not a run folder; pass another --out")
        self.path.mkdir(parents=True, exist_ok=True)

    def remove_state(self) -> None:
        """Delete the resumable training state (``train_state.json`` first, so a half-done removal is not resumable)."""
        self.state_meta.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)

    def check_folder(self) -> None:
        """Raise CheckpointError unless the run folder exists and is a folder."""
        if not self.path.exists():
            raise CheckpointError(f"run folder not found: {self.path}; pass the --out folder of `dscmr train`")
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path} is a file, not a run folder; pass the --out folder of `dscmr train`")

    # ------------------------------------------------------------------------------------------------------------
    # The resolved config

    def save_config(self, cfg: Any) -> None:
        """Write a config dataclass as ``config.toml`` and ``config.json`` (atomically, folder created)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_toml, dumps_toml(cfg))
        atomic_write_text(self.config_json, json.dumps(to_dict(cfg), indent=2) + "\n")

    def read_config_dict(self) -> dict[str, Any]:
        """The saved config as a JSON object.

        Raises:
            CheckpointError: ``config.json`` is missing, not JSON or not an object.
        """
        return self.read_json(self.config_json, what="config")

    def load_config(self, cls: type[T]) -> T:
        """The saved config as the dataclass ``cls`` (unknown keys and wrong types are errors).

        Raises:
            CheckpointError: ``config.json`` is missing, unreadable or does not fit ``cls``.
        """
        data = self.read_config_dict()
        try:
            return from_dict(cls, data, source=str(self.config_json))
        except ConfigError as exc:
            raise CheckpointError(f"{exc}; the run's saved config is damaged, re-run training") from None

    # ------------------------------------------------------------------------------------------------------------
    # JSON files

    def read_json(self, path: Path, *, what: str) -> dict[str, Any]:
        """Read one of the run's JSON files, which must hold an object.

        Args:
            path: The file (one of this folder's paths).
            what: What the file holds, for the error message.

        Raises:
            CheckpointError: Missing, unreadable, not JSON or not an object.
        """
        if not path.is_file():
            raise CheckpointError(f"{self.path} is not a finished run: {path.name} is missing; train it or --resume it")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc}); re-run training") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a {what} object (got {type(data).__name__}); re-run training")
        return data

    def read_model_meta(self) -> dict[str, Any]:
        """``model.json`` as a JSON object (validated by :class:`dscmr.models.DSCMRSpec` when a model is built)."""
        return self.read_json(self.model_meta, what="model description")

    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json``, or an empty dict while the run is unfinished."""
        return self.read_json(self.metrics, what="metrics") if self.metrics.is_file() else {}

    def write_model_meta(self, meta: dict[str, Any]) -> None:
        """Write ``model.json`` atomically."""
        atomic_write_json(self.model_meta, meta)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` atomically (last, as it marks the run finished)."""
        return atomic_write_json(self.metrics, metrics)


def config_for_run(
    cfg: Config, run_dir: str | Path, *, overrides: list[str] | tuple[str, ...] = (), resume: bool = False
) -> Config:
    """The config a run trains with: ``cfg`` for a new run, the run's saved config plus ``overrides`` on resume.

    Args:
        cfg: The config from the command line (its file plus ``overrides``).
        run_dir: The run folder.
        overrides: The ``--set`` overrides, applied again on top of a resumed run's saved config.
        resume: Continue a killed run: it keeps the config it was started with.

    Raises:
        CheckpointError: Without ``resume``, the folder already holds a finished run; or its saved config is
            damaged.
    """
    run = RunDir(run_dir)
    if not resume and run.finished:
        raise CheckpointError(f"{run} already holds a finished run; pass another --out or delete it")
    if resume and run.config_json.is_file():
        return apply_overrides(run.load_config(Config), overrides)
    return cfg
