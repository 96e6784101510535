"""Loading a run: validated against its files, hashed once, and the data root it was trained on recorded."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from dscmr.config import load_config
from dscmr.errors import CheckpointError
from dscmr.train import RunDir, TrainState, load_run, seed_everything, train
from dscmr.utils.io import file_sha256


@pytest.fixture
def run_dir(tmp_path, tiny_config):
    out = tmp_path / "run"
    train(load_config(tiny_config, ["train.epochs=2"]), out, progress=False)
    return out


def test_checkpoint_sha256_is_of_the_loaded_weights_and_computed_once(run_dir):
    run = load_run(run_dir)
    sha = file_sha256(RunDir(run_dir).model)
    assert run.checkpoint_sha256 == sha
    RunDir(run_dir).model.write_bytes(b"replaced after loading")
    assert run.checkpoint_sha256 == sha  # the hash of what was loaded, not re-read from disk


def test_model_json_records_the_spec_and_the_data_format(run_dir):
    meta = json.loads(RunDir(run_dir).model_meta.read_text())
    assert meta["architecture"] == "dscmr" and meta["data_format"] == "npz"
    assert meta["img_hidden"] == [32] and meta["common_dim"] == 16
    assert load_run(run_dir).model.spec.img_dim == meta["img_dim"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [({"architecture": "evil"}, "unknown architecture"), ({"img_hidden": "x"}, "img_hidden")],
)
def test_damaged_model_json_is_refused(run_dir, change, fragment):
    path = RunDir(run_dir).model_meta
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=fragment):
        load_run(run_dir)


def test_config_naming_another_data_format_is_refused(run_dir):
    path = RunDir(run_dir).config_json
    cfg = json.loads(path.read_text())
    cfg["data"]["format"] = "wikipedia"
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="trained on 'npz'"):
        load_run(run_dir)


def test_data_root_is_recorded(tmp_path, tiny_config, tiny_npz):
    broken = tmp_path / "broken.toml"
    broken.write_text(tiny_config.read_text().replace(str(tiny_npz), str(tmp_path / "nowhere.npz")))
    train(load_config(broken, ["train.epochs=1"]), tmp_path / "r", data_root=tiny_npz, progress=False)
    assert load_run(tmp_path / "r").config.data.root == str(tiny_npz.resolve())


def test_seed_everything_seeds_every_generator():
    gen = seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    gen = seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item()) == a


def test_train_state_keeps_the_best_epoch():
    model = torch.nn.Linear(2, 2)
    state = TrainState()
    state.end_epoch({"epoch": 1, "loss": 1.0, "val_avg": 0.5}, model)  # type: ignore[arg-type]
    with torch.no_grad():
        model.weight.zero_()
    state.end_epoch({"epoch": 2, "loss": 0.9, "val_avg": 0.4}, model)  # type: ignore[arg-type]
    assert (state.epoch, state.best_epoch, state.best_val, state.bad_epochs) == (2, 1, 0.5, 1)
    assert state.best_weights["weight"].abs().sum() > 0  # epoch 1's weights, not the zeroed ones
    assert state.best_val_metrics() == {"avg": 0.5}
