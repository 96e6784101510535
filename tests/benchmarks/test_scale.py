"""``dscmr bench scale`` at a tiny size: the JSON's shape, recall in [0, 1], sharded equal to unsharded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dscmr.benchmarks.scale import IdItems, SyntheticRows, bench_scale, exact_topk, nlist_for
from dscmr.errors import UsageError
from dscmr.indexing.manifest import default_shortlist


def test_synthetic_slices_agree_with_the_whole() -> None:
    rows = SyntheticRows(150_000, 8, seed=3)
    whole = rows.read()
    assert whole.shape == (150_000, 8) and whole.dtype == np.float32
    np.testing.assert_array_equal(rows.part(60_000, 140_000).read(), whole[60_000:140_000])
    ids = np.array([0, 65_535, 65_536, 149_999])
    np.testing.assert_array_equal(rows.take(ids), whole[ids])
    np.testing.assert_array_equal(rows.part(100, 70_000).take(np.array([0, 65_436])), whole[[100, 65_536]])
    assert not np.array_equal(SyntheticRows(150_000, 8, seed=4).part(0, 10).read(), whole[:10])
    assert IdItems(5)[1:3] == ["1", "2"] and len(IdItems(5)) == 5
    assert (nlist_for(20_000), nlist_for(1_000_000), nlist_for(10_000_000)) == (128, 1024, 4096)


def test_exact_topk_is_brute_force() -> None:
    rows = SyntheticRows(70_000, 8, seed=1)
    xq = rows.queries(5)
    xb = rows.read()
    xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    scores = (xq / np.linalg.norm(xq, axis=1, keepdims=True)) @ xb.T
    np.testing.assert_array_equal(exact_topk(rows, xq, 10), np.argsort(-scores, axis=1, kind="stable")[:, :10])


def test_bench_scale_json(tmp_path) -> None:
    """One kind keeps it short (each build and probe is a fresh process); test_shards covers IVF equality."""
    from dscmr.cli.main import app

    args = ["bench", "scale", "--n", "5000", "--dim", "16", "--shards", "3", "--queries", "20"]
    workdir = tmp_path / "not" / "yet"  # created, not refused after the ground truth is computed
    res = CliRunner().invoke(app, [*args, "--kind", "BFlat-64", "--no-encode", "--workdir", str(workdir), "--json"])
    assert res.exit_code == 0, res.output
    assert workdir.is_dir() and not any(workdir.iterdir())  # its temporary folder is gone
    report = json.loads(res.stdout)
    assert (report["n"], report["dim"], report["shards"], report["encode"]) == (5_000, 16, 3, None)
    keys = {"index", "shards", "build_seconds", "peak_rss_mb", "disk_bytes", "p50_ms", "recall_at_10"}
    single, sharded = report["results"]
    assert [(r["index"], r["shards"]) for r in (single, sharded)] == [("BFlat-64", 1), ("BFlat-64", 3)]
    for r in (single, sharded):
        assert keys <= set(r)
        assert 0.0 <= r["recall_at_10"] <= 1.0 and r["p50_ms"] > 0 and r["peak_rss_mb"] > 0 and r["disk_bytes"] > 0
    assert sharded["recall_at_10"] == single["recall_at_10"] > 0.5  # hybrid re-ranking finds most neighbours
    assert sharded["search"] == single["search"] == {"shortlist": default_shortlist(5_000, 64)}
    assert sharded["build"]["mode"] == "in-process" and len(sharded["build"]["job_rss_mb"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 500}, "--n must be at least 1000"),
        ({"shards": 1}, "--shards must be a whole number from 2"),
        ({"queries": 0}, "--queries must be from 1"),
        ({"kinds": ("HNSW",)}, "--kind must be one of"),
    ],
)
def test_bad_options_are_usage_errors(kwargs: dict, message: str) -> None:
    options = {"n": 20_000, "shards": 2, **kwargs}
    with pytest.raises(UsageError, match=message):
        bench_scale(options.pop("n"), 16, encode=False, **options)
