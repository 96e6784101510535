"""Typed report views read the dicts the experiments write."""

from __future__ import annotations

import importlib

from dscmr.experiments.report_types import AblationReport, CompareReport, MapReport
from dscmr.experiments.stats import summarize


def test_map_report_reads_summaries() -> None:
    s = summarize([0.5, 0.6, 0.7]).to_dict()
    r = MapReport.from_dict({"metrics": {"avg": s}, "hamming": None, "seeds_for_1pt": 12})
    assert r.metrics["avg"].n == 3 and abs(r.metrics["avg"].mean - 0.6) < 1e-12 and r.hamming == {}
    assert r.metrics["avg"].ci95 is not None and r.metrics["avg"].ci95[0] < 0.6 < r.metrics["avg"].ci95[1]
    assert r.seeds_for_1pt == 12 and r.to_dict()["metrics"]["avg"]["mean"] == r.metrics["avg"].mean


def test_compare_and_ablation_reports() -> None:
    s = summarize([50.0, 52.0]).to_dict()
    c = CompareReport.from_dict(
        {
            "a": {"metrics": {"avg": s}}, "b": {"metrics": {"avg": s}}, "p_ttest": 0.5, "p_wilcoxon": 1.0,
            "p_bootstrap_queries": 0.3, "ci95_bootstrap_queries": [-1.0, 2.0], "prob_b_better": 0.4,
            "cohens_dz": None, "verdict": "no difference",
        }
    )  # fmt: skip
    assert c.ci95_bootstrap_queries == (-1.0, 2.0) and c.cohens_dz is None and c.verdict == "no difference"
    effect = {"estimate": 1.5, "ci95": [0.5, 2.5], "aliased_with": ["A:B"]}
    a = AblationReport.from_dict(
        {
            "design": {"fraction": "full", "cells": 4}, "seeds": [0, 1], "main_effects": {"A": effect},
            "interactions": {}, "conclusion": "c", "best_cell": {"levels": {"a": 1}, "mean": 51.0, "prob_best": None},
        }
    )  # fmt: skip
    assert a.n_seeds == 2 and a.main_effects["A"].aliased_with == ("A:B",) and a.best_prob is None


def test_cli_prints_the_typed_reports(monkeypatch, tmp_path) -> None:
    """The human summaries of `bench map` / `bench compare` / `ablate` read the typed views."""
    from typer.testing import CliRunner

    from dscmr.cli.main import app

    s = summarize([0.5, 0.6]).to_dict()
    cmp = {
        "a": {"metrics": {"avg": s}}, "b": {"metrics": {"avg": s}}, "p_ttest": 0.5, "p_wilcoxon": 1.0,
        "p_bootstrap_queries": 0.3, "ci95_bootstrap_queries": [-1.0, 2.0], "prob_b_better": 0.4, "cohens_dz": 0.1,
        "verdict": "no difference",
    }  # fmt: skip
    abl = {
        "design": {"fraction": "full", "cells": 4}, "seeds": [0, 1], "conclusion": "additive",
        "main_effects": {"A": {"estimate": 1.5, "ci95": [0.5, 2.5], "aliased_with": []}}, "interactions": {},
        "best_cell": {"levels": {"a": 1}, "mean": 51.0, "prob_best": 0.7},
    }  # fmt: skip
    multiseed, compare, factorial = (
        importlib.import_module(f"dscmr.experiments.{m}") for m in ("multiseed", "compare", "factorial")
    )
    monkeypatch.setattr(multiseed, "bench_map", lambda *a, **k: {"metrics": {"avg": s}})
    monkeypatch.setattr(compare, "compare", lambda *a, **k: cmp)
    monkeypatch.setattr(factorial, "ablate", lambda *a, **k: abl)
    monkeypatch.setattr(factorial, "parse_factor", lambda f, cfg: f)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nformat = "npz"\nroot = "x.npz"\n')
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "map", "-c", str(cfg), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "avg      mean 0.5500" in res.stdout
    res = runner.invoke(app, ["bench", "compare", "-c", str(cfg), "--set-b", "train.lr=0.1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "P(B>A) 0.40" in res.stdout and "no difference" in res.stdout
    res = runner.invoke(app, ["ablate", "-c", str(cfg), "--factor", "x", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "+1.50  95% CI [+0.50, +2.50]" in res.stdout and "stays best in 0.70" in res.stdout
