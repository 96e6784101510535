"""`dscmr bench map`, `dscmr bench compare` and `dscmr ablate` through Typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dscmr.cli.main import app

runner = CliRunner()


def test_bench_map_json_and_files(tmp_path, tiny_config):
    out = tmp_path / "bench"
    res = runner.invoke(
        app, ["bench", "map", "--config", str(tiny_config), "--seeds", "2", "--out", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)  # nothing else on stdout
    assert payload["seeds"] == [0, 1] and payload["config"]["config"] == str(tiny_config)
    for name in ("img2txt", "txt2img", "avg"):
        m = payload["metrics"][name]
        assert {"mean", "std", "ci95", "values", "ci95_bootstrap"} <= set(m) and len(m["values"]) == 2
        assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    for f in ("report.json", "report.md", "seeds.png", "pr_curves.png"):
        assert (out / f).is_file(), f
    assert json.loads((out / "report.json").read_text())["metrics"] == payload["metrics"]


def test_bench_compare_json(tmp_path, tiny_config):
    out = tmp_path / "cmp"
    res = runner.invoke(
        app,
        [
            "bench", "compare", "--config", str(tiny_config), "--seeds", "2", "--out", str(out), "--json",
            "--set-a", "loss.norm=mean_l2", "--set-b", "loss.norm=frobenius",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)
    keys = {"a", "b", "seeds", "diff_mean", "ci95", "p_ttest", "p_wilcoxon", "p_bootstrap_queries", "prob_b_better"}
    assert keys | {"verdict", "cohens_dz", "unit"} <= set(p)
    assert p["seeds"] == [0, 1] and p["unit"] == "mAP points" and p["a"]["set"] == ["loss.norm=mean_l2"]
    diff = p["b"]["metrics"]["avg"]["mean"] - p["a"]["metrics"]["avg"]["mean"]
    assert p["diff_mean"] == pytest.approx(diff)
    assert 0.0 <= p["prob_b_better"] <= 1.0 and isinstance(p["verdict"], str)
    for f in ("report.json", "report.md", "paired.png", "seeds.png"):
        assert (out / f).is_file(), f
    assert p["verdict"] in (out / "report.md").read_text()


def test_ablate_json(tmp_path, tiny_config):
    out = tmp_path / "abl"
    res = runner.invoke(
        app,
        [
            "ablate", "--config", str(tiny_config), "--seeds", "2", "--out", str(out), "--json",
            "--factor", "model.dropout=0,0.2", "--factor", "loss.beta=0.1,1", "--set", "train.epochs=3",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    p = json.loads(res.stdout)
    assert [f["name"] for f in p["factors"]] == ["model.dropout", "loss.beta"]
    assert set(p["main_effects"]) == {"model.dropout", "loss.beta"}
    assert set(p["interactions"]) == {"model.dropout:loss.beta"}
    assert {"estimate", "ci95"} <= set(p["main_effects"]["loss.beta"])
    assert set(p["best_cell"]["levels"]) == {"model.dropout", "loss.beta"}
    assert p["design"]["cells"] == 4 and len(list((out / "cells").iterdir())) == 4
    for f in ("report.json", "report.md", "main_effects.png", "interactions.png", "cells.png"):
        assert (out / f).is_file(), f


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "map", "--seeds", "2", "--set", "train.nope=1"], "unknown key 'nope'"),
        (["bench", "map", "--seeds", "0"], "--seeds must be at least 1"),
        (["bench", "compare", "--seeds", "1", "--set-b", "loss.beta=1"], "at least 2 paired seeds"),
        (["bench", "compare", "--seeds", "3"], "--set-a and/or --set-b"),
        (["ablate", "--factor", "model.dropout=0"], "section.key=level1,level2"),
        (["ablate", "--factor", "model.dropout:0,1"], "section.key=level1,level2"),
        (["ablate", "--factor", "loss.beta=0.1,1", "--fraction", "half"], "resolution"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_config, args, message):
    res = runner.invoke(app, [*args, "--config", str(tiny_config), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
