"""``dscmr search ... --server URL`` against a live server, ``dscmr bench serve``, and the serve command's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from dscmr.cli.main import app

runner = CliRunner()


def test_search_text_and_image_through_a_server(live_server, shapes_run):
    res = runner.invoke(
        app, ["search", "text", "a large red circle", "--index", "images", "--server", live_server, "-k", "3", "--json"]
    )
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["bundle"] == "images" and len(body["hits"]) == 3 and body["hits"][0]["rank"] == 1
    picture = sorted((shapes_run.folder / "images").glob("*.png"))[0]
    res = runner.invoke(app, ["search", "image", str(picture), "--index", "texts", "--server", live_server, "-k", "2"])
    assert res.exit_code == 0, res.output
    assert "cosine search of texts" in res.output


def test_server_errors_are_one_line(live_server):
    res = runner.invoke(app, ["search", "text", "a circle", "--index", "nope", "--server", live_server])
    assert res.exit_code == 2 and "unknown bundle 'nope'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["search", "text", "a circle", "--index", "images", "--server", "http://127.0.0.1:1"])
    assert res.exit_code == 2 and "cannot reach the server" in res.output
    res = runner.invoke(app, ["search", "text", "a circle", "--index", "images", "--server", "ftp://x"])
    assert res.exit_code == 2 and "http://" in res.output
    res = runner.invoke(app, ["search", "text", "a circle", "--index", "images"])
    assert res.exit_code == 2 and "--run is required" in res.output


def test_bench_serve_prints_rows(shapes_run):
    args = ["bench", "serve", "--run", str(shapes_run.run), "--index", str(shapes_run.images)]
    res = runner.invoke(
        app, [*args, "--index", str(shapes_run.texts), "--clients", "1,2", "--seconds", "0.5", "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["results"]
    assert {(r["kind"], r["clients"]) for r in rows} == {(k, c) for k in ("text", "id", "image") for c in (1, 2)}
    for r in rows:
        assert set(r) >= {"kind", "clients", "qps", "p50_ms", "p99_ms", "errors", "rss_mb_start", "rss_mb_end"}
        assert r["errors"] == 0 and r["qps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] and r["rss_mb_end"] > 0
    bad = runner.invoke(app, [*args, "--clients", "0"])
    assert bad.exit_code == 2 and "--clients" in bad.output
    bad = runner.invoke(app, [*args, "--clients", "a,b"])
    assert bad.exit_code == 2 and "--clients" in bad.output


_STARTER = """
import sys, time
from dscmr.serve.bench import free_port, start_server
proc = start_server(sys.argv[1], [sys.argv[2]], port=free_port())
print(proc.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux only")
def test_a_bench_server_stops_when_the_bench_is_killed(shapes_run, tmp_path):
    """A SIGKILLed bench (no finally runs) must not leave its ``dscmr serve`` child running."""
    bench = subprocess.Popen(
        [sys.executable, "-c", _STARTER, str(shapes_run.run), str(shapes_run.texts)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server_pid = int(bench.stdout.readline())  # printed once the server answers /healthz
        os.kill(server_pid, 0)  # running
    finally:
        bench.kill()
        bench.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(server_pid):
        time.sleep(0.1)
    assert not _alive(server_pid), "the server outlived the killed bench"


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our zombie (it is not our child; ignore)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


_PROBE = """
import sys
sys.argv = ["dscmr", *sys.argv[1:]]
from dscmr.cli.main import app
try:
    app()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "faiss", "sentence_transformers", "fastapi", "uvicorn") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["search", "text", "--help"],
        ["serve", "--help"],
        ["bench", "serve", "--help"],
        ["search", "text", "a query", "--no-such-option"],
        ["serve", "--run", "r", "--index", "b", "--host", "0.0.0.0"],
        ["search", "text", "a query", "--index", "b", "--server", "http://127.0.0.1:1"],
    ],
)
def test_help_argument_errors_and_server_queries_do_not_import_torch(argv):
    """`dscmr --help`, argument errors and `search --server` stay light: no torch, faiss or models."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120)
    heavy = [line for line in res.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], res.stderr[-2000:]


def test_demo_serve_starts_the_server_on_the_demo_bundles(tmp_path, monkeypatch):
    """`dscmr demo --serve` hands the demo's run and both bundles to the server (both faked here)."""
    from types import SimpleNamespace

    import dscmr.demo
    import dscmr.serve.server

    calls: dict = {}
    fake = SimpleNamespace(out=tmp_path, run_dir=tmp_path / "run", to_dict=lambda: {})
    monkeypatch.setattr(dscmr.demo, "run_demo", lambda out, **kw: fake)
    monkeypatch.setattr(
        dscmr.serve.server, "serve", lambda run, bundles, **kw: calls.update(run=run, bundles=bundles, **kw)
    )
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--serve", "--port", "8123"])
    assert res.exit_code == 0, res.output
    assert calls["run"] == tmp_path / "run" and calls["port"] == 8123
    assert calls["bundles"] == [tmp_path / "bundles" / "images", tmp_path / "bundles" / "texts"]
    from dscmr.demo import serve_command

    assert serve_command(tmp_path / "run", tmp_path).startswith(f"dscmr serve --run {tmp_path / 'run'} --index ")
