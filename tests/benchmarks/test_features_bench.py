"""``dscmr bench features``: split items, the probe, the LR baseline, and the JSON the command prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dscmr.benchmarks.features import PROBE_CS, fit_probe, load_split_items, lr_baseline_map
from dscmr.cli.main import app
from dscmr.errors import DataError


def _folder(root: Path, *, with_val: bool = True) -> Path:
    """Red pictures of class ``r`` and blue ones of class ``b``; 4 train + 2 val each; image 0 has two captions."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    records = []
    for i in range(12):
        cls = "r" if i % 2 == 0 else "b"
        arr = np.zeros((40, 56, 3), dtype=np.uint8)
        arr[..., 0 if cls == "r" else 2] = 150 + 8 * i
        Image.fromarray(arr).save(root / "images" / f"im{i:02d}.png")
        split = "val" if i >= 8 and with_val else "train"
        records.append({"image": f"images/im{i:02d}.png", "text": f"a {cls} picture", "labels": [cls], "split": split})
    records.append({"image": "images/im00.png", "text": "second caption", "labels": ["r"], "split": "train"})
    records.append({"image": "images/im11.png", "text": "held out", "labels": ["b"], "split": "test"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_split_items_unique_images_train_first(tmp_path):
    items = load_split_items(_folder(tmp_path / "d"))
    assert len(items.paths) == 12 and len(set(items.paths)) == 12  # image 0 once; the test record is not used
    assert items.is_val.tolist() == [False] * 8 + [True] * 4
    assert items.classes == ["b", "r"] and items.labels.sum(axis=1).tolist() == [1.0] * 12
    assert items.texts[0] == "a r picture second caption"
    with pytest.raises(DataError, match="'val'"):
        load_split_items(_folder(tmp_path / "no_val", with_val=False))


def test_probe_learns_a_separable_problem_and_picks_c_from_the_grid():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 5)) + 4 * np.eye(3, 5)[y]
    probe = fit_probe(x, y)
    assert probe[-1].C in PROBE_CS
    assert (probe.predict(x + 0.01) == y).mean() > 0.95


def test_lr_baseline_map_perfect_and_ranked():
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    assert lr_baseline_map(labels, labels, labels) == {"img2txt": 1.0, "txt2img": 1.0, "avg": 1.0}
    noisy = labels[[1, 2, 0, 1]]  # every image predicts the wrong class
    assert lr_baseline_map(noisy, labels, labels)["avg"] < 0.6


def test_bench_features_json(tmp_path, monkeypatch):
    monkeypatch.setenv("DSCMR_CACHE", str(tmp_path / "cache"))  # the text features are cached
    root = _folder(tmp_path / "d")
    before = torch.get_num_threads()
    args = ["bench", "features", "--data-root", str(root), "--backbone", "mobilenet_v2_100"]
    args += ["--setting", "crop", "--setting", "pad:flip", "--image-size", "64", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["n_train"], out["n_val"], out["threads"]) == (8, 4, 1)
    rows = out["rows"]
    assert [(r["fit"], r["views"]) for r in rows] == [("crop", "one"), ("pad", "flip")]
    for r in rows:
        assert r["backbone"] == "mobilenet_v2_100" and r["image_size"] == 64 and r["encode_seconds"] > 0
        assert r["probe_accuracy"] in (0.5, 0.75, 1.0)  # of 4 val images, red vs blue: better than chance
        assert 0 < r["lr_map"]["avg"] <= 1 and r["lr_map"]["avg"] == pytest.approx(
            (r["lr_map"]["img2txt"] + r["lr_map"]["txt2img"]) / 2, abs=1e-4
        )
    assert torch.get_num_threads() == before
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 1


def test_bench_features_bad_setting_is_one_line(tmp_path):
    res = CliRunner().invoke(app, ["bench", "features", "--data-root", str(tmp_path), "--setting", "zoom"])
    assert res.exit_code == 2 and "error: --setting must be FIT[:VIEWS]" in res.output
