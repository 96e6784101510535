"""``dscmr encode``: JSON output, files written, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dscmr.cli.main import app
from tests.corpus.conftest import SHARD_SIZE


def test_encode_json_then_rerun_keeps_every_shard(config_file: Path, tmp_path: Path):
    out = tmp_path / "features"
    args = ["encode", "--config", str(config_file), "--out", str(out), "--shard-size", str(SHARD_SIZE), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["mode"] == "in-process" and summary["computed"] == summary["shards"] == 7
    assert summary["images_encoded"] == 12 and summary["texts_encoded"] == 16 and summary["items_per_second"] > 0
    assert (out / "manifest.json").is_file() and len(list((out / "shards").glob("*.npy"))) == 7
    again = json.loads(CliRunner().invoke(app, args).stdout)
    assert (again["computed"], again["reused"]) == (0, 7)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "data.format=npz"], "raw datasets"),
        (["--shard-size", "0"], "--shard-size"),
        (["--set", "data.nope=1"], "unknown key"),
        (["--set", "data.text_train_layers=1"], "frozen pooled features"),
    ],
)
def test_encode_errors_are_one_line(config_file: Path, tmp_path: Path, extra: list[str], message: str):
    res = CliRunner().invoke(app, ["encode", "--config", str(config_file), "--out", str(tmp_path / "f"), *extra])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "f").exists()
