"""The shipped vision configs load into their dataclasses; unknown keys are rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from dscmr.config import apply_overrides, load_toml
from dscmr.errors import ConfigError
from dscmr.vision_tasks.classify import ClassifyConfig
from dscmr.vision_tasks.denoise import DenoiseConfig
from dscmr.vision_tasks.hsi import HsiConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "vision"
CLASSES = {"hsi": HsiConfig, "denoise": DenoiseConfig, "classify": ClassifyConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_config_files_load(path: Path) -> None:
    cfg = load_toml(CLASSES[path.name.split("_")[0]], path)
    assert cfg.train.seed == 0


def test_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="train_ratio"):
        apply_overrides(HsiConfig(), ["data.train_ratio=1.5"])
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(DenoiseConfig(), ["train.nope=1"])
    with pytest.raises(ConfigError, match="patch_size"):
        apply_overrides(HsiConfig(), ["data.patch_size=24"])
