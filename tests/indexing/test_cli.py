"""The index, search and bench CLI through Typer's CliRunner: exit codes, JSON, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dscmr.cli.main import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _error_line(result) -> str:
    text = result.stderr if hasattr(result, "stderr") and result.stderr else result.output
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def image_bundle(trained_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "img"
    res = _run(
        "index", "build", "--run", trained_run, "--modality", "image", "--out", out, "--binary", "itq", "--bits", "16",
        "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["count"] == 50 and summary["metrics"] == ["cosine", "hamming", "hybrid"]
    return out


def test_build_add_and_search_json(trained_run: Path, image_bundle: Path) -> None:
    res = _run("index", "add", "--bundle", image_bundle, "--run", trained_run, "--split", "val", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 80
    for metric in ("cosine", "hamming", "hybrid"):
        res = _run(
            "search", "text", "--query-id", "190", "--run", trained_run, "--index", image_bundle, "-k", "4",
            "--metric", metric, "--json",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["metric"] == metric and out["query"] == {"id": "190"}
        assert [h["rank"] for h in out["hits"]] == [1, 2, 3, 4]
        assert set(out["hits"][0]) == {"rank", "id", "score", "item"}


def test_human_output_is_a_table(trained_run: Path, image_bundle: Path) -> None:
    res = _run("search", "text", "--query-id", "190", "--run", trained_run, "--index", image_bundle, "-k", "3")
    assert res.exit_code == 0, res.output
    assert "rank" in res.stdout and "score" in res.stdout


def test_image_search_of_a_text_bundle(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "txt"
    assert _run("index", "build", "--run", trained_run, "--modality", "text", "--out", out).exit_code == 0
    res = _run("search", "image", "--query-id", "200", "--run", trained_run, "--index", out, "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["hits"]) == 10


@pytest.mark.parametrize(
    "args,message",
    [
        (["search", "text", ""], "empty query"),
        (["search", "text"], "empty query"),
        (["search", "text", "a cat", "-k", "0"], "k must be"),
        (["search", "text", "a cat"], "use --query-id"),
        (["search", "image", "/no/such/image.jpg"], "cannot read image"),
        (["search", "image", ""], "empty query"),
        (["search", "text", "--query-id", "nope"], "no text item"),
        (["search", "text", "--query-id", "190", "--metric", "dot"], "unknown metric"),
    ],
)
def test_query_errors_are_one_line_exit_2(
    trained_run: Path, image_bundle: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    bundle = image_bundle
    if args[1] == "image":
        bundle = tmp_path / "txt"
        assert _run("index", "build", "--run", trained_run, "--modality", "text", "--out", bundle).exit_code == 0
    res = _run(*args, "--run", trained_run, "--index", bundle)
    assert res.exit_code == 2, res.output
    assert message in _error_line(res)


def test_query_of_the_wrong_modality_exit_2(trained_run: Path, image_bundle: Path) -> None:
    res = _run("search", "image", "--query-id", "200", "--run", trained_run, "--index", image_bundle)
    assert res.exit_code == 2 and "queries are texts" in _error_line(res)


def test_missing_and_mismatched_bundle_exit_2(trained_run: Path, image_bundle: Path, tmp_path: Path) -> None:
    res = _run("search", "text", "--query-id", "190", "--run", trained_run, "--index", tmp_path / "none")
    assert res.exit_code == 2 and "not found" in _error_line(res)
    m = json.loads((image_bundle / "manifest.json").read_text())
    m["run"]["checkpoint_sha256"] = "f" * 64
    (image_bundle / "manifest.json").write_text(json.dumps(m))
    res = _run("search", "text", "--query-id", "190", "--run", trained_run, "--index", image_bundle)
    assert res.exit_code == 2 and "another model" in _error_line(res)


def test_build_errors_exit_2(trained_run: Path, tmp_path: Path) -> None:
    res = _run("index", "build", "--run", trained_run, "--modality", "audio", "--out", tmp_path / "x")
    assert res.exit_code == 2 and "image or text" in _error_line(res)
    res = _run(
        "index", "build", "--run", trained_run, "--modality", "image", "--out", tmp_path / "x", "--binary", "learned"
    )
    assert res.exit_code == 2 and "no hash layer" in _error_line(res)
    res = _run("index", "build", "--run", trained_run, "--modality", "image", "--out", tmp_path / "x", "--bits", "12",
               "--binary", "sign")  # fmt: skip
    assert res.exit_code == 2 and "multiple of 8" in _error_line(res)
    assert not (tmp_path / "x").exists()


def test_bench_search_json() -> None:
    res = _run(
        "bench", "search", "--n", "3000", "--dim", "16", "--bits", "16,32", "--nq", "20", "--factory", "HNSW16",
        "--factory", "IVF16,Flat", "--ef-search", "32", "--nprobe", "8", "--shortlist", "100", "--rounds", "2",
        "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 3000 and out["dim"] == 16 and out["rounds"] == 2 and out["bits"] == [16, 32]
    kinds = [r["index"] for r in out["results"]]
    assert kinds == ["Flat", "HNSW16", "IVF16,Flat", "BFlat", "hybrid", "BFlat", "hybrid"]
    assert [r["params"].get("bits") for r in out["results"][3:]] == [16, 16, 32, 32]
    keys = {"index", "recall_at_10", "p50_ms", "p99_ms", "batch_ms_per_query", "build_seconds", "bytes_per_item"}
    for r in out["results"]:
        assert keys <= set(r)
    flat = out["results"][0]
    assert flat["recall_at_10"] == 1.0 and flat["bytes_per_item"] >= 64
    bflat = out["results"][3]
    assert 2 <= bflat["bytes_per_item"] < 3  # 16 bits = 2 bytes per item plus the header
    assert 4 <= out["results"][5]["bytes_per_item"] < 5


def test_index_info_checks_and_verifies(image_bundle: Path) -> None:
    res = _run("index", "info", "--bundle", image_bundle, "--verify", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["count"] == 50 and s["metrics"] == ["cosine", "hamming", "hybrid"] and s["bytes"] > 0
    data = bytearray((image_bundle / "vectors.npy").read_bytes())
    data[-4:] = b"\x7f\x7f\x7f\x7f" if data[-4:] != b"\x7f\x7f\x7f\x7f" else b"\x00\x00\x00\x00"
    (image_bundle / "vectors.npy").write_bytes(bytes(data))
    assert _run("index", "info", "--bundle", image_bundle).exit_code == 0  # same size: only --verify sees it
    res = _run("index", "info", "--bundle", image_bundle, "--verify")
    assert res.exit_code == 2 and "SHA-256" in _error_line(res)


def test_a_pq_or_sq_bundle_reports_and_uses_its_refine_default(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sq"
    res = _run(
        "index", "build", "--run", trained_run, "--modality", "image", "--out", out, "--float", "IVF2,SQ4", "--json"
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["metrics"] == ["cosine"] and summary["search"] == {
        "rule": "v1",
        "shortlist": None,
        "nprobe": 2,
        "refine": 50,
    }
    assert (out / "vectors.npy").is_file()
    info = _run("index", "info", "--bundle", out)
    assert info.exit_code == 0 and "search defaults for k = 10: nprobe 2, re-rank top 50" in info.stdout
    for extra in ((), ("--shortlist", "8")):
        res = _run(
            "search", "text", "--query-id", "190", "--run", trained_run, "--index", out, "-k", "4", *extra, "--json"
        )
        assert res.exit_code == 0, res.output
        scores = [h["score"] for h in json.loads(res.stdout)["hits"]]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    bad = _run(
        "search", "text", "--query-id", "190", "--run", trained_run, "--index", out, "-k", "4", "--shortlist", "2"
    )
    assert bad.exit_code == 2 and "at least k" in _error_line(bad)
