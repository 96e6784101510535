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


def test_topk_overlap_matches_a_loop():
    import numpy as np

    from dscmr.benchmarks.encoders import topk_overlap

    rng = np.random.default_rng(0)
    q, db = rng.normal(size=(7, 5)), rng.normal(size=(30, 5))
    noisy_q, noisy_db = q + 0.3 * rng.normal(size=q.shape), db + 0.3 * rng.normal(size=db.shape)

    def top(a, b):
        sims = [[float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for y in b] for x in a]
        return [set(sorted(range(len(b)), key=lambda j: -row[j])[:10]) for row in sims]

    expected = np.mean([len(x & y) / 10 for x, y in zip(top(q, db), top(noisy_q, noisy_db), strict=True)])
    assert abs(topk_overlap(q, db, noisy_q, noisy_db, k=10) - expected) < 1e-9
    assert topk_overlap(q, db, q, db) == 1.0


def test_bench_encoders_engines_json(tmp_path):
    from dscmr.encoders.engine import onnxruntime_available

    if not onnxruntime_available():
        import pytest

        pytest.skip("onnxruntime/onnx not installed: pip install onnxruntime onnx")
    args = ["bench", "encoders", "--texts", "6", "--images", "4", "--image-size", "64", "--rounds", "1"]
    res = CliRunner().invoke(app, [*args, "--engine", "torch,onnx,onnx-int8", "--cache-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["text"]["n"] == 6 and "files_ratio" in out["image"]  # today's fields are kept
    for e in ("torch", "onnx", "onnx-int8"):
        img, txt = out["image"][e], out["text"][e]
        assert img["items_per_s"] > 0 and img["batch1_ms"] > 0
        ref = out["image"]["torchvision"]["items_per_s"]
        assert abs(img["speedup_vs_torchvision"] - img["items_per_s"] / ref) <= 0.01 * img["speedup_vs_torchvision"]
        assert img["files_items_per_s"] > 0 and img["files_speedup_vs_torchvision"] > 0
        assert txt["items_per_s"] > 0 and txt["latency_vs_sentence_transformers"] > 0
    assert list(tmp_path.glob("onnx/*/image.onnx")) and list(tmp_path.glob("onnx/*/text.int8.onnx"))


def test_bench_encoders_rejects_an_unknown_engine():
    res = CliRunner().invoke(app, ["bench", "encoders", "--engine", "torch,tensorrt", "--json"])
    assert res.exit_code == 2 and "unknown encoder engine 'tensorrt'" in res.output
