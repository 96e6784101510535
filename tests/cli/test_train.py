"""`dscmr train` / `dscmr eval` through Typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dscmr.cli.main import app

runner = CliRunner()


def test_train_json_then_eval(tmp_path, tiny_config):
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(tiny_config),
            "--out",
            str(out),
            "--json",
            "--set",
            "train.epochs=3",
            "--seed",
            "5",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert set(payload) == {"img2txt", "txt2img", "avg", "split", "best_epoch", "seed", "train_seconds"}
    assert payload["seed"] == 5 and payload["split"] == "test" and 1 <= payload["best_epoch"] <= 3
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["epochs"] == 3 and saved["train"]["seed"] == 5

    ev = runner.invoke(app, ["eval", str(out), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["avg"] == payload["avg"]
    ev_val = runner.invoke(app, ["eval", str(out), "--split", "val", "--k", "5", "--json"])
    assert json.loads(ev_val.stdout)["split"] == "val" and json.loads(ev_val.stdout)["k"] == 5

    again = runner.invoke(app, ["train", "--config", str(tiny_config), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a finished run" in again.output


def test_data_root_overrides_config(tmp_path, tiny_config, tiny_npz, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text(tiny_config.read_text().replace(str(tiny_npz), str(tmp_path / "nowhere.npz")))
    res = runner.invoke(app, ["train", "--config", str(broken), "--out", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 2 and "nowhere.npz" in res.output
    res = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(broken),
            "--out",
            str(tmp_path / "r"),
            "--json",
            "--data-root",
            str(tiny_npz),
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("DSCMR_DATA", str(tiny_npz))
    res = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(broken),
            "--out",
            str(tmp_path / "r2"),
            "--json",
            "--set",
            "train.epochs=1",
        ],
    )
    assert res.exit_code == 0, res.output


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_config):
    cases = [
        ["train", "--config", str(tmp_path / "missing.toml")],
        ["train", "--config", str(tiny_config), "--set", "train.learning_rate=1"],
        ["train", "--config", str(tiny_config), "--set", "nonsense"],
        ["eval", str(tmp_path / "no_run")],
        ["train", "--config", str(tiny_config), "--out", str(tmp_path / "x"), "--resume"],
    ]
    for args in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output
        assert "Traceback" not in res.output


def test_resume_via_cli(tmp_path, tiny_config):
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", "--config", str(tiny_config), "--out", str(out), "--json"])
    assert first.exit_code == 0
    (out / "metrics.json").unlink()  # pretend the run was killed after its last checkpoint
    res = runner.invoke(app, ["train", "--config", str(tiny_config), "--out", str(out), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["avg"] == json.loads(first.stdout)["avg"]


def test_bench_eval_json():
    res = runner.invoke(app, ["bench", "eval", "--n", "300", "--dim", "16", "--loop-queries", "20", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["max_abs_diff_vs_loop"] < 1e-9
    assert payload["n_queries"] == 300 and payload["speedup"] > 0
