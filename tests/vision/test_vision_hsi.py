"""Hyperspectral pipeline: split, PCA on training pixels, a tiny run, deterministic eval, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dscmr.errors import DataError
from dscmr.vision_tasks.hsi import (
    HsiConfig,
    HsiDataConfig,
    HsiTrainConfig,
    build_model,
    classification_metrics,
    load_cube,
    predict,
    prepare_hsi,
    stratified_split,
)

TINY = ["--pca-bands", "16", "--patch-size", "11", "--epochs", "2", "--batch-size", "16"]


def test_stratified_split() -> None:
    labels = np.repeat([0, 1, 2], [10, 20, 1])
    tr, te = stratified_split(labels, 0.3, seed=0)
    assert np.bincount(labels[tr]).tolist() == [3, 6, 1]
    assert np.intersect1d(tr, te).size == 0 and len(tr) + len(te) == len(labels)
    tr2, _ = stratified_split(labels, 0.3, seed=0)
    tr3, _ = stratified_split(labels, 0.3, seed=1)
    assert np.array_equal(tr, tr2) and not np.array_equal(tr, tr3)


def test_pca_is_fitted_on_training_pixels_only(hsi_files: tuple[Path, Path]) -> None:
    cfg = HsiDataConfig(cube=str(hsi_files[0]), gt=str(hsi_files[1]), pca_bands=16, patch_size=11)
    cube, gt, names = load_cube(cfg)
    data = prepare_hsi(cube, gt, names, cfg, seed=0)
    test_px = data.coords[data.test_idx]
    cube2 = cube.copy()
    cube2[test_px[:, 0], test_px[:, 1]] += 100.0  # changing test pixels must not change the projection
    cube2[gt == 0] -= 50.0  # nor unlabelled ones
    data2 = prepare_hsi(cube2, gt, names, cfg, seed=0)
    assert np.allclose(data.pca_components, data2.pca_components, atol=1e-5)
    assert data.padded.shape == (12 + 10, 12 + 10, 16)
    assert data.labelled_patches(data.train_idx[:3]).shape == (3, 16, 11, 11)


def test_metrics_hand_computed() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    m = classification_metrics(y_true, y_pred, 2)
    assert m["oa"] == pytest.approx(75.0)
    assert m["aa"] == pytest.approx(75.0)
    assert m["kappa"] == pytest.approx(50.0)  # po = .75, pe = .5
    assert m["confusion"].tolist() == [[1, 1], [0, 2]]


def test_eval_is_deterministic(hsi_files: tuple[Path, Path]) -> None:
    cfg = HsiConfig(
        data=HsiDataConfig(cube=str(hsi_files[0]), gt=str(hsi_files[1]), pca_bands=16, patch_size=11),
        train=HsiTrainConfig(epochs=1),
    )
    cube, gt, names = load_cube(cfg.data)
    data = prepare_hsi(cube, gt, names, cfg.data, seed=0)
    model = build_model(cfg, data.num_classes)
    model.train()  # predict must switch to eval mode (dropout off)
    px = data.coords[data.test_idx]
    first = predict(model, data, px[:, 0], px[:, 1], batch_size=7)
    second = predict(model, data, px[:, 0], px[:, 1], batch_size=64)
    assert not model.training
    assert np.array_equal(first, second)


@pytest.mark.parametrize("model", ["hybridsn", "hybridsn_dsc", "hybridsn_2d3d"])
def test_cli_tiny_run(app, runner, hsi_files: tuple[Path, Path], tmp_path: Path, model: str) -> None:
    out = tmp_path / "run"
    args = ["vision", "hsi", "train", "--model", model, "--cube", str(hsi_files[0]), "--gt", str(hsi_files[1])]
    result = runner.invoke(app, [*args, *TINY, "--seed", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) == {"oa", "aa", "kappa", "train_seconds", "seed"}
    assert summary["seed"] == 3 and 0 <= summary["oa"] <= 100
    for name in ("model.safetensors", "config.toml", "config.json", "metrics.json", "confusion_matrix.csv",
                 "confusion_matrix.json", "classification_map.png", "pca.npz"):  # fmt: skip
        assert (out / name).is_file(), name
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["name"] == model and saved["data"]["pca_bands"] == 16
    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert np.array(cm["matrix"]).sum() == json.loads((out / "metrics.json").read_text())["n_test"]


def test_same_seed_same_result(app, runner, hsi_files: tuple[Path, Path], tmp_path: Path) -> None:
    args = ["vision", "hsi", "train", "--cube", str(hsi_files[0]), "--gt", str(hsi_files[1]), *TINY, "--json"]
    a = json.loads(runner.invoke(app, [*args, "--out", str(tmp_path / "a")]).stdout)
    b = json.loads(runner.invoke(app, [*args, "--out", str(tmp_path / "b")]).stdout)
    assert (a["oa"], a["aa"], a["kappa"]) == (b["oa"], b["aa"], b["kappa"])


def test_mat_files_with_keys(hsi_files: tuple[Path, Path], tmp_path: Path) -> None:
    cube, gt = np.load(hsi_files[0]), np.load(hsi_files[1])
    scipy.io.savemat(tmp_path / "c.mat", {"data": cube, "other": np.zeros((2, 2, 2))})
    scipy.io.savemat(tmp_path / "g.mat", {"labels": gt})
    cfg = HsiDataConfig(cube=str(tmp_path / "c.mat"), gt=str(tmp_path / "g.mat"), cube_key="data")
    c, g, names = load_cube(cfg)
    assert c.shape == cube.shape and np.array_equal(g, gt) and len(names) == 3
    with pytest.raises(DataError, match="cube-key"):
        load_cube(HsiDataConfig(cube=str(tmp_path / "c.mat"), gt=str(tmp_path / "g.mat")))


def test_bad_ground_truth_is_a_one_line_error(app, runner, hsi_files: tuple[Path, Path], tmp_path: Path) -> None:
    np.save(tmp_path / "bad_gt.npy", np.zeros((5, 5), dtype=np.int64))
    args = ["vision", "hsi", "train", "--cube", str(hsi_files[0]), "--gt", str(tmp_path / "bad_gt.npy"), "--json"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "does not match" in result.stderr


def test_indian_pines_loads() -> None:
    pytest.importorskip("tensorly")
    try:
        cube, gt, names = load_cube(HsiDataConfig())
    except DataError as exc:
        pytest.skip(str(exc))
    assert cube.shape == (145, 145, 200) and gt.shape == (145, 145)
    assert len(names) == 16 and int((gt > 0).sum()) == 10249
