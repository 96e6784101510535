"""Hostile run folders through the real `dscmr` command: damaged, edited or missing files give one `error:` line,
exit 2, no traceback, and leave the run folder exactly as it was.

One tiny run is trained per module (through `dscmr train --data-root`, with a config whose own data root does not
exist); each case copies it and damages the copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_clustered_features
from tests.hostile.conftest import CliResult, assert_clean_error, run_cli

NO_ENV = {"DSCMR_DATA": ""}  # the data must be found through what the run recorded


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-epoch run on a synthetic npz, trained with --data-root, and an image bundle built from it."""
    tmp = tmp_path_factory.mktemp("hostile_runs")
    img, txt, labels = make_clustered_features(120, 3)
    npz = tmp / "tiny.npz"
    np.savez(npz, img=img, txt=txt, labels=labels, split=np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20))
    config = tmp / "tiny.toml"
    config.write_text(
        f'[data]\nformat = "npz"\nroot = "{tmp / "moved_away.npz"}"\n\n'
        "[model]\nimg_hidden = [16]\ntxt_hidden = [16]\ncommon_dim = 8\n\n"
        "[train]\nepochs = 2\nbatch_size = 32\npatience = 0\ncheckpoint_every = 1\nthreads = 1\n"
    )
    run = tmp / "run"
    res = run_cli("train", "--config", config, "--out", run, "--data-root", npz, "--json", env=NO_ENV)
    assert res.code == 0, res.stderr
    bundle = tmp / "bundle"
    res = run_cli("index", "build", "--run", run, "--modality", "image", "--out", bundle, "--json", env=NO_ENV)
    assert res.code == 0, res.stderr  # --data-root was recorded: no --data, no DSCMR_DATA
    return {"run": run, "bundle": bundle, "npz": npz, "config": config}


def _snapshot(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (or of ``path`` itself), by relative name."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    result = change(data)
    path.write_text(json.dumps(data if result is None else result))


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, key = dotted.split(".")
    for p in parents:
        data = data[p]
    data[key] = value


def _damage(run: Path, kind: str) -> None:
    """Apply one kind of damage to a copied run folder."""
    weights = run / "model.safetensors"
    damages: dict[str, Callable[[], object]] = {
        "config_is_a_list": lambda: (run / "config.json").write_text("[1]"),
        "config_unknown_key": lambda: _edit_json(run / "config.json", lambda d: _set(d, "train.learning_rate", 1)),
        "config_wrong_type": lambda: _edit_json(run / "config.json", lambda d: _set(d, "train.lr", "fast")),
        "config_other_format": lambda: _edit_json(run / "config.json", lambda d: _set(d, "data.format", "wikipedia")),
        "model_evil_architecture": lambda: _edit_json(run / "model.json", lambda d: _set(d, "architecture", "evil")),
        "model_bad_width": lambda: _edit_json(run / "model.json", lambda d: _set(d, "img_hidden", "x")),
        "model_other_shape": lambda: _edit_json(run / "model.json", lambda d: _set(d, "common_dim", 12)),
        "model_json_garbage": lambda: (run / "model.json").write_bytes(b"\xff\x00not json"),
        "weights_missing": weights.unlink,
        "weights_truncated": lambda: weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2]),
        "weights_garbage": lambda: weights.write_bytes(b"\x00" * 64),
        "metrics_not_json": lambda: (run / "metrics.json").write_text("{ not json"),
    }
    damages[kind]()


def _copy(trained: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    return run


def _check(res: CliResult, path: Path, before: dict[str, str], *fragments: str) -> None:
    assert_clean_error(res, *fragments)
    assert _snapshot(path) == before, "the failing command changed the run folder"


@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("config_is_a_list", ("config.json", "config object")),
        ("config_unknown_key", ("unknown key", "learning_rate")),
        ("config_wrong_type", ("lr", "number")),
        ("config_other_format", ("data.format", "trained on 'npz'")),
        ("model_evil_architecture", ("model.json", "unknown architecture")),
        ("model_bad_width", ("model.json", "img_hidden")),
        ("model_other_shape", ("does not match",)),
        ("model_json_garbage", ("model.json", "not valid JSON")),
        ("weights_missing", ("model.safetensors is missing",)),
        ("weights_truncated", ("model.safetensors", "not a readable safetensors")),
        ("weights_garbage", ("model.safetensors", "not a readable safetensors")),
        ("metrics_not_json", ("metrics.json", "not valid JSON")),
    ],
)
def test_eval_refuses_a_damaged_run(trained, tmp_path, kind, fragments):
    run = _copy(trained, tmp_path)
    _damage(run, kind)
    before = _snapshot(run)
    _check(run_cli("eval", run, "--json", env=NO_ENV), run, before, *fragments)


@pytest.mark.slow  # loads the bundle and FAISS too
@pytest.mark.parametrize(
    ("kind", "fragments"),
    [
        ("config_is_a_list", ("config object",)),
        ("model_evil_architecture", ("unknown architecture",)),
        ("model_bad_width", ("img_hidden",)),
        ("weights_garbage", ("not a readable safetensors",)),
    ],
)
def test_search_refuses_a_damaged_run(trained, tmp_path, kind, fragments):
    run = _copy(trained, tmp_path)
    _damage(run, kind)
    before = _snapshot(run)
    res = run_cli("search", "text", "--run", run, "--index", trained["bundle"], "--query-id", "0", env=NO_ENV)
    _check(res, run, before, *fragments)


def test_index_build_refuses_a_run_trained_on_another_format(trained, tmp_path):
    run = _copy(trained, tmp_path)
    _damage(run, "config_other_format")
    before = _snapshot(run)
    res = run_cli("index", "build", "--run", run, "--modality", "text", "--out", tmp_path / "b", env=NO_ENV)
    _check(res, run, before, "trained on 'npz'")
    assert not (tmp_path / "b").exists()


def test_empty_run_folder(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    _check(run_cli("eval", run), run, {}, "not a finished run")


def test_run_folder_that_is_a_file(trained, tmp_path):
    run = tmp_path / "run"
    run.write_text("not a folder")
    before = _snapshot(run)
    _check(run_cli("eval", run), run, before, "is a file")
    res = run_cli("train", "--config", trained["config"], "--out", run, "--data-root", trained["npz"], "--json")
    _check(res, run, before, "is a file")


def test_resume_with_a_damaged_training_state(trained, tmp_path):
    run = _copy(trained, tmp_path)
    (run / "train_state.json").write_text("[]")
    before = _snapshot(run)
    res = run_cli("train", "--config", trained["config"], "--out", run, "--data-root", trained["npz"], "--resume")
    _check(res, run, before, "train_state.json", "training state")


def test_recorded_data_root_is_used_and_data_overrides_it(trained, tmp_path):
    run = _copy(trained, tmp_path)
    assert json.loads((run / "config.json").read_text())["data"]["root"] == str(trained["npz"].resolve())
    before = _snapshot(run)
    res = run_cli("eval", run, "--json", env=NO_ENV)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["split"] == "test"
    missing = tmp_path / "elsewhere.npz"
    res = run_cli("index", "build", "--run", run, "--modality", "text", "--out", tmp_path / "b", "--data", missing)
    _check(res, run, before, "elsewhere.npz")
