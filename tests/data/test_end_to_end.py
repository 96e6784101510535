"""A folder dataset through every command: train, eval, index build, search text and search image."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dscmr.cli.main import app
from dscmr.data.builtin import generate_shapes

runner = CliRunner()


def test_folder_dataset_through_the_cli(tmp_path):
    folder = generate_shapes(tmp_path / "shapes", n=60)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f"""
[data]
format = "folder"
root = "{folder}"
image_size = 48
cache_dir = "{tmp_path / "cache"}"
standardize = true

[model]
img_hidden = [32]
txt_hidden = [32]
common_dim = 16
hash_bits = 16

[train]
epochs = 3
batch_size = 16
lr = 1e-3
patience = 0
threads = 1
"""
    )
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout)
    assert 0 < trained["avg"] <= 1

    res = runner.invoke(app, ["eval", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["avg"] == trained["avg"]

    img_bundle, txt_bundle = tmp_path / "b-img", tmp_path / "b-txt"
    res = runner.invoke(
        app,
        [
            "index",
            "build",
            "--run",
            str(run),
            "--modality",
            "image",
            "--out",
            str(img_bundle),
            "--binary",
            "learned",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["index", "build", "--run", str(run), "--modality", "text", "--out", str(txt_bundle), "--json"]
    )
    assert res.exit_code == 0, res.output

    res = runner.invoke(
        app,
        ["search", "text", "a large red circle", "--run", str(run), "--index", str(img_bundle), "-k", "3", "--json"],
    )
    assert res.exit_code == 0, res.output
    hits = json.dumps(json.loads(res.stdout))
    assert hits.count(".png") >= 3 and str(folder) in hits

    query = str(folder / "images" / "shapes_00000.png")
    res = runner.invoke(
        app, ["search", "image", query, "--run", str(run), "--index", str(txt_bundle), "-k", "2", "--json"]
    )
    assert res.exit_code == 0, res.output

    res = runner.invoke(app, ["search", "text", "   ", "--run", str(run), "--index", str(img_bundle)])
    assert res.exit_code == 2 and "empty" in res.output
