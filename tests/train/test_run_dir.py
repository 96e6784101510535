"""RunDir: the run folder's layout, its JSON files and the config a (resumed) run trains with."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dscmr.config import Config, load_config
from dscmr.errors import CheckpointError
from dscmr.train import RunDir, config_for_run


def test_paths_and_states(tmp_path):
    run = RunDir(str(tmp_path / "r"))
    assert run.path == tmp_path / "r"
    assert run.model.name == "model.safetensors" and run.model_meta.name == "model.json"
    assert run.metrics.parent == run.path and run.state.parent == run.path
    assert not run.finished and not run.resumable
    run.create()
    run.state_meta.write_text("{}")
    assert run.resumable and not run.finished
    run.write_metrics({"avg": 0.5})
    assert run.finished and run.read_metrics() == {"avg": 0.5}


def test_config_round_trip(tmp_path):
    cfg = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, lr=3e-4, betas=(0.9, 0.99)))
    run = RunDir(tmp_path / "new" / "run")
    run.save_config(cfg)
    assert run.config_toml.is_file()
    assert run.load_config(Config) == cfg
    assert load_config(run.config_toml) == cfg


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("[1]", "does not hold a config object"), ("{", "not valid JSON"), (b"\xff\xfe", "not valid JSON")],
)
def test_bad_config_json(tmp_path, content, fragment):
    run = RunDir(tmp_path)
    if isinstance(content, bytes):
        run.config_json.write_bytes(content)
    else:
        run.config_json.write_text(content)
    with pytest.raises(CheckpointError, match=fragment):
        run.load_config(Config)


def test_config_with_unknown_key_or_wrong_type(tmp_path):
    run = RunDir(tmp_path)
    run.config_json.write_text(json.dumps({"train": {"lr": "fast"}}))
    with pytest.raises(CheckpointError, match="lr"):
        run.load_config(Config)
    run.config_json.write_text(json.dumps({"bogus": {}}))
    with pytest.raises(CheckpointError, match="bogus"):
        run.load_config(Config)


def test_check_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        RunDir(tmp_path / "missing").check_folder()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        RunDir(tmp_path / "file").check_folder()
    with pytest.raises(CheckpointError, match="is a file"):
        RunDir(tmp_path / "file").create()


def test_config_for_run(tmp_path):
    saved = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, epochs=7, lr=1e-3))
    run = RunDir(tmp_path)
    run.save_config(saved)
    given = Config()
    assert config_for_run(given, tmp_path) is given  # a new run trains with the given config
    resumed = config_for_run(given, tmp_path, overrides=["train.epochs=9"], resume=True)
    assert resumed.train.epochs == 9 and resumed.train.lr == 1e-3  # saved config plus the new overrides
    run.write_metrics({})
    with pytest.raises(CheckpointError, match="already holds a finished run"):
        config_for_run(given, tmp_path)
