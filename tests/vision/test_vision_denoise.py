"""Denoising task: tiny training run, seeded evaluation, weights recognition, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dscmr.vision_tasks.denoise import seeded_noise

TINY = ["--epochs", "1", "--steps", "2", "--batch-size", "4", "--patch-size", "16", "--set", "model.depth=4"]


def test_noise_is_seeded_per_image() -> None:
    a = seeded_noise((8, 8), 25, seed=1, index=0)
    assert np.array_equal(a, seeded_noise((8, 8), 25, seed=1, index=0))
    assert not np.array_equal(a, seeded_noise((8, 8), 25, seed=1, index=1))
    assert not np.array_equal(a, seeded_noise((8, 8), 25, seed=2, index=0))


def test_train_eval_apply(app, runner, gray_images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["vision", "denoise", "train", "--data", str(gray_images), "--val", str(gray_images), *TINY]
    result = runner.invoke(app, [*args, "--out", str(run), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["steps"] == 2 and metrics["n"] == 2
    for name in ("model.safetensors", "config.toml", "config.json", "metrics.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["depth"] == 4

    evals = []
    for _ in range(2):
        res = runner.invoke(
            app,
            [
                "vision",
                "denoise",
                "eval",
                "--weights",
                str(run),
                "--data",
                str(gray_images),
                "--sigma",
                "25",
                "--seed",
                "5",
                "--json",
            ],  # fmt: skip
        )
        assert res.exit_code == 0, res.output
        evals.append(json.loads(res.stdout))
    assert set(evals[0]) == {"psnr", "ssim", "noisy_psnr", "n"}
    assert evals[0] == evals[1]  # seeded noise, eval mode: identical figures

    out = tmp_path / "den.png"
    res = runner.invoke(
        app,
        [
            "vision",
            "denoise",
            "apply",
            str(gray_images / "img0.png"),
            "--weights",
            str(run / "model.safetensors"),
            "--out",
            str(out),
            "--add-noise",
            "25",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    from PIL import Image

    assert Image.open(out).size == (48, 48)


def test_reference_weights_are_recognised(app, runner, denoise_data: Path) -> None:
    weights = denoise_data / "dncnn_s_sigma25_reference.safetensors"
    res = runner.invoke(
        app,
        [
            "vision",
            "denoise",
            "eval",
            "--weights",
            str(weights),
            "--data",
            str(denoise_data / "Set12"),
            "--limit",
            "1",
            "--json",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 1 and out["psnr"] > out["noisy_psnr"] + 8


def test_corrupt_image_is_a_one_line_error(app, runner, gray_images: Path, tmp_path: Path) -> None:
    (gray_images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    run = tmp_path / "run"
    args = ["vision", "denoise", "train", "--data", str(gray_images), *TINY, "--out", str(run)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: cannot read image") and res.stderr.count("\n") == 1
    assert "broken.png" in res.stderr


def test_missing_weights_exit_2(app, runner, gray_images: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["vision", "denoise", "eval", "--weights", str(tmp_path / "nope"), "--data", str(gray_images)]
    )
    assert res.exit_code == 2 and res.stderr.startswith("error: ")
