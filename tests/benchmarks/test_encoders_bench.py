"""``dscmr bench encoders``: the JSON it prints is complete, consistent and restores the thread count."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from dscmr.cli.main import app


def test_bench_encoders_json_is_consistent():
    before = torch.get_num_threads()
    args = ["bench", "encoders", "--texts", "6", "--images", "4", "--image-size", "64", "--rounds", "1", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    text, image = out["text"], out["image"]
    assert text["n"] == 6 and set(text["items_per_s"]) == {"sentence_transformers", "dscmr"}
    assert all(v > 0 for v in text["items_per_s"].values())
    rate = text["items_per_s"]
    expected = rate["dscmr"] / rate["sentence_transformers"]  # from rates rounded to 0.1/s
    assert abs(text["ratio"] - expected) <= 0.05 * expected
    assert image["n"] == 4 and image["image_size"] == 64
    assert image["ratio_vs_torchvision"]["torchvision_mobilenet_v2"] == 1.0
    assert {"dscmr_inference_mode", "dscmr_inference_mode_channels_last", "files_dscmr"} <= set(image["items_per_s"])
    assert image["files_ratio"] > 0
    assert torch.get_num_threads() == before  # the benchmark's thread setting does not leak
