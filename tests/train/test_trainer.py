"""Training: validation-based selection, reproducibility, resume equals an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from dscmr.config import load_config
from dscmr.errors import CheckpointError
from dscmr.train import encode_split, load_run, train


class Killed(Exception):
    pass


def test_train_writes_run_and_selects_on_validation(tmp_path, tiny_config):
    cfg = load_config(tiny_config)
    res = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.toml", "config.json", "model.safetensors", "model.json", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    vals = [h["val_avg"] for h in metrics["history"]]
    assert res.best_epoch == 1 + vals.index(max(vals))
    assert metrics["best_epoch"] == res.best_epoch and metrics["seed"] == cfg.train.seed
    assert res.val["avg"] == pytest.approx(max(vals))
    assert res.test["avg"] > 0.6  # clustered toy data is learnable
    loaded = load_run(run)
    assert not loaded.model.training
    from dscmr.data import load_dataset

    ds = load_dataset(cfg.data)
    u, v = encode_split(loaded.model, ds.test)
    from dscmr.eval import cross_modal_map

    assert cross_modal_map(u, v, ds.test.labels)["avg"] == pytest.approx(res.test["avg"])


def test_same_seed_same_result_and_different_seed_differs(tmp_path, tiny_config):
    cfg = load_config(tiny_config, ["train.epochs=3"])
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    c = train(load_config(tiny_config, ["train.epochs=3", "train.seed=1"]), tmp_path / "c", progress=False)
    assert a.test == b.test and a.history == b.history
    assert a.history != c.history
    wa = load_run(tmp_path / "a").model.state_dict()
    wb = load_run(tmp_path / "b").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("overrides", [[], ["model.dropout=0.3", "data.standardize=true"]])
def test_resume_matches_uninterrupted(tmp_path, tiny_config, overrides):
    cfg = load_config(tiny_config, ["train.epochs=6", "train.checkpoint_every=2", *overrides])
    full = train(cfg, tmp_path / "full", progress=False)

    def kill_after_4(epoch, record):
        if epoch == 4:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "killed", progress=False, on_epoch_end=kill_after_4)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = train(cfg, tmp_path / "killed", progress=False, resume=True)
    assert resumed.test == full.test and resumed.val == full.val
    assert resumed.best_epoch == full.best_epoch
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_early_stopping(tmp_path, tiny_config):
    cfg = load_config(tiny_config, ["train.epochs=200", "train.patience=2", "train.lr=0.05"])
    res = train(cfg, tmp_path / "r", progress=False)
    assert res.epochs_run < 200
    assert res.epochs_run - res.best_epoch == 2


def test_resume_without_state_is_an_error(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(load_config(tiny_config), tmp_path / "empty", progress=False, resume=True)


def test_load_run_errors(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "missing")
    train(load_config(tiny_config, ["train.epochs=1"]), tmp_path / "r", progress=False)
    (tmp_path / "r" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_run(tmp_path / "r")


def test_retrieval_centre_is_the_training_mean_and_can_be_switched_off(tmp_path, tiny_config):
    on = load_run(train(load_config(tiny_config, ["train.epochs=2"]), tmp_path / "on", progress=False).run_dir)
    off = load_run(
        train(
            load_config(tiny_config, ["train.epochs=2", "model.center=false"]), tmp_path / "off", progress=False
        ).run_dir
    )
    assert torch.count_nonzero(off.model.center) == 0
    assert torch.count_nonzero(on.model.center) > 0
    x = torch.randn(4, on.model.img_dim)
    assert torch.allclose(on.model.encode_image(x), on.model._image_common(x) - on.model.center)


def test_resume_refuses_a_half_saved_state(tmp_path, tiny_config):
    cfg = load_config(tiny_config, ["train.epochs=4", "train.checkpoint_every=2"])

    def kill_after_2(epoch, record):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "r", progress=False, on_epoch_end=kill_after_2)
    meta = json.loads((tmp_path / "r" / "train_state.json").read_text())
    meta["epoch"] = 1  # as if the kill came between the tensor file and the JSON
    (tmp_path / "r" / "train_state.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="inconsistent"):
        train(cfg, tmp_path / "r", progress=False, resume=True)
