"""How a vision command's options become its frozen config: file, then explicit options, then ``--set``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dscmr.config import apply_overrides, load_toml

T = TypeVar("T")


def resolve_config(cls: type[T], config: str | Path | None, sets: list[str] | None, updates: Mapping[str, Any]) -> T:
    """A task config: ``config`` (a TOML file, or the defaults), then ``updates``, then ``sets``.

    Args:
        cls: The task's frozen config dataclass (sections as fields: ``data``, ``model``, ``train``).
        config: TOML file, or None for the defaults.
        sets: ``section.key=value`` overrides, applied last.
        updates: ``{"section.key": value}`` from explicit options; None values mean "not given".

    Raises:
        ConfigError: An unknown section or key, or a value of the wrong type.
    """
    cfg: Any = load_toml(cls, config) if config else cls()
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in updates.items():
        if value is not None:
            section, key = dotted.split(".")
            sections.setdefault(section, {})[key] = value
    new = {name: dataclasses.replace(getattr(cfg, name), **kw) for name, kw in sections.items()}
    return apply_overrides(dataclasses.replace(cfg, **new), sets)


def default_run_dir(task: str, name: str, seed: int) -> Path:
    """``runs/vision/TASK/NAME-seedSEED-YYYYmmdd-HHMMSS``."""
    return Path("runs") / "vision" / task / f"{name}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
