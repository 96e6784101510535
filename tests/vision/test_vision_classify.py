"""Image classification on an ImageFolder layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(4):
            arr = np.clip(np.array(colour) + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


def test_train_writes_run_folder(app, runner, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "vision",
            "classify",
            "train",
            "--data",
            str(image_folder),
            "--model",
            "mobilenet_v1_050",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--json",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["n_train"] + metrics["n_val"] == 8
    assert json.loads((out / "classes.json").read_text()) == ["class0", "class1"]
    for name in ("model.safetensors", "config.toml", "config.json", "metrics.json"):
        assert (out / name).is_file()

    from safetensors.torch import load_file

    from dscmr.vision import create_model

    model = create_model("mobilenet_v1_050", num_classes=2)
    model.load_state_dict(load_file(str(out / "model.safetensors")))


def test_corrupt_image_exit_2(app, runner, image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "class0" / "bad.jpg").write_bytes(b"not a jpeg")
    res = runner.invoke(
        app,
        [
            "vision",
            "classify",
            "train",
            "--data",
            str(image_folder),
            "--model",
            "mobilenet_v1_050",
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "r"),
        ],  # fmt: skip
    )
    assert res.exit_code == 2 and res.stderr.startswith("error: cannot read image")


def test_models_command(app, runner) -> None:
    res = runner.invoke(app, ["vision", "models", "hybridsn*", "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout) == {"models": ["hybridsn", "hybridsn_2d3d", "hybridsn_dsc"]}
