"""``dscmr export onnx`` and the ``--engine`` option on tiny built-in runs: parity with torch, int8, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dscmr.cli.main import app

runner = CliRunner()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _torch_embeddings(run_dir: Path):
    """The run's test split and its torch common-space embeddings ``(u, v)``."""
    from dscmr.data import load_dataset
    from dscmr.train import encode_split, load_run

    run = load_run(run_dir)
    split = load_dataset(run.config.data).split("test")
    u, v = encode_split(run.model, split)
    return split, u.detach().numpy(), v.detach().numpy()


@pytest.fixture(scope="module")
def exports(tiny_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, run_dir in tiny_runs.items():
        res = runner.invoke(app, ["export", "onnx", str(run_dir), "--out", str(root / name), "--int8", "--json"])
        assert res.exit_code == 0, res.output
        out[name] = (root / name, json.loads(res.stdout))
    return out


def test_export_writes_graphs_tokenizer_and_manifest(exports, tiny_runs):
    from dscmr.encoders.exported import ExportManifest

    folder, printed = exports["shapes"]
    manifest = ExportManifest.read(folder)
    assert printed["embed_dim"] == manifest.embed_dim == 32  # the quick demo config's common_dim
    assert manifest.image.image_size == 64 and manifest.text.max_seq_length == 256
    for name in (manifest.image.file, manifest.text.file, manifest.image.file_int8, manifest.text.file_int8):
        assert (folder / name).is_file()
    assert (folder / manifest.text.tokenizer).is_dir()
    assert manifest.run == str(tiny_runs["shapes"].resolve()) and len(manifest.checkpoint_sha256) == 64
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("dataset", ["shapes", "digits"])
def test_exported_query_paths_match_torch_per_row(exports, tiny_runs, dataset):
    from dscmr.encoders.exported import ExportedRun

    split, u, v = _torch_embeddings(tiny_runs[dataset])
    ex = ExportedRun(exports[dataset][0])
    paths, texts = [str(p) for p in split.img_items], list(split.txt_items)
    for batch_size in (1, 5):  # dynamic batch axis
        assert _cos(u, ex.encode_image_paths(paths, batch_size=batch_size)).min() >= 0.9999
        assert _cos(v, ex.encode_texts(texts, batch_size=batch_size)).min() >= 0.9999
    int8 = ExportedRun(exports[dataset][0], int8=True)
    assert _cos(v, int8.encode_texts(texts)).mean() > 0.9


@pytest.mark.parametrize("dataset", ["shapes", "digits"])
def test_engines_keep_map_within_half_a_point(tiny_runs, dataset):
    from dscmr.benchmarks.encoders import engine_quality

    q = engine_quality(tiny_runs[dataset], ["torch", "onnx", "onnx-int8"])
    print(dataset, q)  # the int8 top-10 overlap is reported (pytest -s), not asserted beyond sanity
    assert q["torch"]["top10_overlap"] == 1.0 and q["onnx"]["top10_overlap"] >= 0.99
    assert 0.5 < q["onnx-int8"]["top10_overlap"] <= 1.0
    for e in ("onnx", "onnx-int8"):
        assert abs(q[e]["map"] - q["torch"]["map"]) <= 0.005, (e, q)


def test_index_and_search_with_the_onnx_engine(tiny_runs, tmp_path):
    run = str(tiny_runs["shapes"])
    hits = {}
    for engine in ("torch", "onnx"):
        bundle = tmp_path / engine
        args = ["index", "build", "--run", run, "--modality", "image", "--out", str(bundle), "--engine", engine]
        res = runner.invoke(app, [*args, "--json"])
        assert res.exit_code == 0, res.output
        query = ["search", "text", "a large red circle", "--run", run, "--index", str(bundle), "-k", "5"]
        res = runner.invoke(app, [*query, "--engine", engine, "--json"])
        assert res.exit_code == 0, res.output
        hits[engine] = [h["id"] for h in json.loads(res.stdout)["hits"]]
    assert hits["onnx"] == hits["torch"] and len(hits["torch"]) == 5


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    return lines[0]


def test_export_of_a_missing_run_is_one_error_line(tmp_path, onnx_cache):
    res = runner.invoke(app, ["export", "onnx", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert "run folder not found" in _one_error_line(res)
    assert not (tmp_path / "out").exists()


def test_export_of_a_feature_mode_run_is_one_error_line(tiny_runs, tmp_path):
    run = tmp_path / "features-run"
    shutil.copytree(tiny_runs["shapes"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["format"] = "npz"  # as if trained on precomputed feature arrays
    (run / "config.json").write_text(json.dumps(cfg))
    meta = json.loads((run / "model.json").read_text())
    if "data_format" in meta:  # model.json records the format too
        meta["data_format"] = "npz"
        (run / "model.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["export", "onnx", str(run), "--out", str(tmp_path / "out")])
    assert "precomputed features" in _one_error_line(res)
    assert not (tmp_path / "out").exists()


def test_export_of_a_multi_view_run_is_one_error_line(tiny_runs, tmp_path):
    run = tmp_path / "flip-run"
    shutil.copytree(tiny_runs["shapes"], run)
    cfg = json.loads((run / "config.json").read_text())
    if "image_views" not in cfg["data"]:
        pytest.skip("this tree has no data.image_views")
    cfg["data"]["image_views"] = "flip"  # query features would be the mean of two views: not one graph call
    (run / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(app, ["export", "onnx", str(run), "--out", str(tmp_path / "out")])
    assert "image_views='flip'" in _one_error_line(res)


def test_export_refuses_a_folder_that_is_not_an_export(tiny_runs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["export", "onnx", str(tiny_runs["shapes"]), "--out", str(out)])
    assert "not an ONNX export" in _one_error_line(res)
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_engine_option_is_one_error_line(tiny_runs, tmp_path):
    args = ["index", "build", "--run", str(tiny_runs["shapes"]), "--modality", "image", "--out", str(tmp_path / "b")]
    assert "unknown encoder engine" in _one_error_line(runner.invoke(app, [*args, "--engine", "tensorrt"]))


def test_a_projected_seed_ensemble_exports_with_its_projection(onnx_cache, tmp_path):
    from dataclasses import replace

    from dscmr.data.builtin import builtin_folder
    from dscmr.demo import demo_config
    from dscmr.encoders.exported import ExportedRun
    from dscmr.train import train

    cfg = demo_config(dataset="shapes", quick=True, cache_dir=str(onnx_cache), threads=1)
    folder = builtin_folder("shapes", onnx_cache, n=100)
    cfg = replace(cfg, data=replace(cfg.data, format="folder", root=str(folder)))
    cfg = replace(cfg, train=replace(cfg.train, epochs=3, ensemble=2), model=replace(cfg.model, project_dim=8))
    train(cfg, tmp_path / "run", progress=False)
    res = runner.invoke(app, ["export", "onnx", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["embed_dim"] == 8
    split, u, v = _torch_embeddings(tmp_path / "run")
    ex = ExportedRun(tmp_path / "x")
    assert _cos(u, ex.encode_image_paths([str(p) for p in split.img_items])).min() >= 0.9999
    assert _cos(v, ex.encode_texts(list(split.txt_items))).min() >= 0.9999
