from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dscmr.config import Config, apply_overrides, load_config, load_toml
from dscmr.errors import ConfigError
from dscmr.train import RunDir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, Config)
    assert dataclasses.is_dataclass(cfg)


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"learning_rate.*bad\.toml"):
        load_config(p)


def test_unknown_section(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[trian]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(p)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[train]\nepochs = "many"\n')
    with pytest.raises(ConfigError, match=r"epochs.*bad\.toml"):
        load_config(p)


def test_invalid_toml(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_overrides_replace_fields_and_are_typed() -> None:
    cfg = apply_overrides(
        Config(),
        [
            "train.lr=3e-4",
            "model.img_hidden=[64, 32]",
            "data.format=npz",
            "data.standardize=true",
            "train.epochs=7",
        ],
    )
    assert cfg.train.lr == 3e-4
    assert cfg.model.img_hidden == (64, 32)
    assert cfg.data.format == "npz"
    assert cfg.data.standardize is True
    assert cfg.train.epochs == 7
    assert Config().train.lr == 1e-4  # frozen defaults untouched


@pytest.mark.parametrize("override", ["train.nope=1", "nope.lr=1", "train.epochs=abc", "train", "train.epochs"])
def test_bad_overrides(override: str) -> None:
    with pytest.raises(ConfigError):
        apply_overrides(Config(), [override])


def test_validation_of_values() -> None:
    with pytest.raises(ConfigError, match="loss.norm"):
        apply_overrides(Config(), ["loss.norm=l1"])
    with pytest.raises(ConfigError, match="hash_bits"):
        apply_overrides(Config(), ["model.hash_bits=12"])


def test_override_order_never_matters_and_the_result_is_checked_once() -> None:
    shipped = REPO / "configs" / "pascal_sentence_photos.toml"  # ensemble = 5, common_dim = 1024, project_dim = 128
    narrow = ["model.common_dim=16", "model.project_dim=64"]  # the first alone: 5 x 16 = 80 < 128
    assert load_config(shipped, narrow) == load_config(shipped, narrow[::-1])
    assert load_config(shipped, narrow).model.project_dim == 64
    last = load_config(shipped, ["model.common_dim=16", "model.project_dim=64", "model.common_dim=32"])
    assert (last.model.common_dim, last.model.project_dim) == (32, 64)  # the last value of a key wins
    with pytest.raises(ConfigError, match="wider than the embedding's 5 x 16"):
        load_config(shipped, ["model.common_dim=16", "train.lr=1e-3"])  # the final config is still checked


def test_save_roundtrip(tmp_path: Path) -> None:
    cfg = apply_overrides(Config(), ["train.lr=0.001", "model.txt_hidden=[128]", "data.root=x y"])
    RunDir(tmp_path).save_config(cfg)
    assert load_toml(Config, tmp_path / "config.toml") == cfg
    assert (tmp_path / "config.json").is_file()
