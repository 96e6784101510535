"""``dscmr bench serve``: queries per second and latency of a running ``dscmr serve`` over loopback HTTP.

The server runs in its own process (started here, on a free loopback port), so its memory can be read from
``/proc`` and the clients do not share its interpreter. For each query kind the server can answer (``text``,
``id``, ``image``) and each client count, client threads send requests back to back for ``seconds`` (or until
``max_requests``), each on its own keep-alive connection. Every row reports QPS, the median and 99th percentile
latency, the errors (non-200 answers and failed requests) and the server's RSS before and after.

``synthetic_bundle`` writes a bundle of seeded synthetic embeddings for a run (real query encoders, any size), for
measuring the service at a scale the test data does not reach.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import UsageError

TEXTS = (
    "a large red circle",
    "a blue square above a green triangle",
    "two yellow triangles",
    "a small green circle on the left",
    "a photo of a city at night",
    "a handwritten seven",
    "several shapes of different colours",
    "a person riding a bicycle",
)


@dataclass(frozen=True)
class BenchRow:
    """One (kind, clients) measurement."""

    kind: str
    metric: str
    clients: int
    requests: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    errors: int
    rss_mb_start: float
    rss_mb_end: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LINUX = sys.platform.startswith("linux")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to send the server SIGTERM when this process dies, even by SIGKILL, so no server outlives a bench."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def start_server(
    run: str | Path, bundles: list[str | Path], *, port: int, extra: tuple[str, ...] = (), timeout: float = 300.0
) -> subprocess.Popen:
    """Start ``dscmr serve`` on 127.0.0.1:``port`` (with ``extra`` options) and wait until ``/healthz`` answers.

    Its stderr goes to a temporary file (a pipe nobody reads could fill and stall the server).
    """
    import tempfile

    import httpx

    cmd = [sys.executable, "-m", "dscmr.cli.main", "serve", "--run", str(run), "--port", str(port), *extra]
    for b in bundles:
        cmd += ["--index", str(b)]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, preexec_fn=_die_with_parent if _LINUX else None
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().strip().splitlines()
            raise UsageError(f"the server did not start: {err[-1] if err else f'exit code {proc.returncode}'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise UsageError(f"the server did not answer within {timeout:.0f} s")


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _requests(kind: str, bundle: str, ids: list[str], metric: str) -> list[dict[str, Any]]:
    """Request arguments (for ``httpx.Client.post``) cycled through by the clients."""
    opts: dict[str, Any] = {"bundle": bundle, "k": 10, "metric": metric}
    if kind == "text":
        return [{"json": {**opts, "text": t}} for t in TEXTS]
    if kind == "id":
        return [{"json": {**opts, "id": i}} for i in ids]
    form = {n: str(v) for n, v in opts.items()}
    return [{"files": {"image": ("q.png", _png(s), "image/png")}, "data": form} for s in range(4)]


def _measure(
    url: str, reqs: list[dict[str, Any]], *, clients: int, seconds: float, max_requests: int
) -> tuple[list[float], int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    sent = [0]

    def client(offset: int) -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        with httpx.Client(timeout=30.0) as c:
            i = offset
            while not mine or time.perf_counter() < stop_at:  # every client sends at least one request
                with lock:
                    if sent[0] >= max_requests:
                        break
                    sent[0] += 1
                t0 = time.perf_counter()
                try:
                    ok = c.post(url, **reqs[i % len(reqs)]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - t0)
                bad += not ok
                i += 1
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=client, args=(j,)) for j in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def _kinds(info: dict[str, Any], ids: dict[str, list[str]]) -> list[tuple[str, str]]:
    """``(kind, bundle)`` pairs the server can answer."""
    out: list[tuple[str, str]] = []
    raw = info["run"]["raw_queries"]
    by_query = {b["query_modality"]: b["name"] for b in reversed(info["bundles"])}
    if raw and "text" in by_query:
        out.append(("text", by_query["text"]))
    first = info["bundles"][0]["name"]
    if ids.get(first):
        out.append(("id", first))
    if raw and "image" in by_query:
        out.append(("image", by_query["image"]))
    return out


def bench_serve(
    run: str | Path,
    bundles: list[str | Path],
    *,
    clients: tuple[int, ...] = (1, 4, 16),
    seconds: float = 20.0,
    max_requests: int = 100_000,
    kinds: tuple[str, ...] = ("text", "id", "image"),
    metric: str | None = None,
    engine: str | None = None,
    warmup: int = 20,
) -> dict[str, Any]:
    """Start a server on loopback and measure it (see the module docstring).

    Args:
        run: Run folder.
        bundles: Bundle folders to serve.
        clients: Concurrent client counts, one row each per kind.
        seconds: Time per row.
        max_requests: Requests per row at most.
        kinds: Query kinds to measure (those the server cannot answer are skipped).
        metric: Metric of every query to a bundle that supports it (others use their default).
        engine: The server's ``--engine`` (query encoders: torch, onnx, onnx-int8), None for its default.
        warmup: Requests per kind sent before measuring.

    Returns:
        ``{"results": [BenchRow.to_dict(), ...], "server": {...}}``.
    """
    import httpx

    if not clients or min(clients) < 1 or max(clients) > 256:
        raise UsageError("--clients takes counts between 1 and 256, e.g. 1,4,16")
    if not 0 < seconds <= 600:
        raise UsageError(f"--seconds must be in (0, 600], got {seconds}")
    port = free_port()
    proc = start_server(run, bundles, port=port, extra=("--engine", engine) if engine else ())
    base = f"http://127.0.0.1:{port}"
    try:
        info = httpx.get(f"{base}/api/v1/info", timeout=30).json()
        ids = {
            b["name"]: httpx.get(f"{base}/api/v1/bundles/{b['name']}/examples", params={"n": 64}, timeout=120)
            .json()
            .get("ids", [])
            for b in info["bundles"]
        }
        rows: list[BenchRow] = []
        for kind, bundle in _kinds(info, ids):
            if kind not in kinds:
                continue
            meta = next(b for b in info["bundles"] if b["name"] == bundle)
            used = str(metric if metric in meta["metrics"] else meta["default_metric"])
            reqs = _requests(kind, bundle, ids.get(bundle, []), used)
            _measure(f"{base}/api/v1/search", reqs, clients=1, seconds=60, max_requests=warmup)
            for n in clients:
                rss0 = rss_mb(proc.pid)
                t0 = time.perf_counter()
                lat, errors = _measure(
                    f"{base}/api/v1/search", reqs, clients=n, seconds=seconds, max_requests=max_requests
                )
                elapsed = time.perf_counter() - t0
                ms = np.asarray(lat) * 1e3 if lat else np.asarray([np.nan])
                rows.append(
                    BenchRow(
                        kind,
                        used,
                        n,
                        len(lat),
                        round(elapsed, 2),
                        round(len(lat) / elapsed, 1),
                        round(float(np.percentile(ms, 50)), 2),
                        round(float(np.percentile(ms, 99)), 2),
                        errors,
                        rss0,
                        rss_mb(proc.pid),
                    )  # fmt: skip
                )
        server: dict[str, Any] = {
            "bundles": [{k: b[k] for k in ("name", "modality", "count")} for b in info["bundles"]]
        }
        server["engine"] = engine or "default"
        return {"results": [r.to_dict() for r in rows], "server": server, "cpus": os.cpu_count()}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def synthetic_bundle(
    run: str | Path, out: str | Path, *, n: int, modality: str = "image", seed: int = 0, float_factory: str = "Flat"
) -> Path:
    """Write a bundle of ``n`` seeded synthetic embeddings for ``run`` at ``out`` (a ``float_factory`` float index
    and 64-bit ITQ codes).

    Items are named ``synthetic-<i>``; the run's own data config is recorded as the source, so id queries look
    up the run's dataset as usual.
    """
    from dscmr.benchmarks.search import clustered_embeddings
    from dscmr.config import to_dict
    from dscmr.indexing.build import BuildSpec, build_bundle
    from dscmr.indexing.from_run import as_run, run_info

    if n < 1:
        raise UsageError(f"--synthetic must be at least 1, got {n}")
    loaded = as_run(run)
    xb = clustered_embeddings(n, int(loaded.model.embed_dim), seed=seed)
    build_bundle(
        out,
        xb,
        modality=modality,
        items=[f"synthetic-{i}" for i in range(n)],
        kind="id",
        run_info=run_info(loaded),
        spec=BuildSpec(float_factory=float_factory, binary="itq", bits=64),
        source={"data": to_dict(loaded.config.data), "split": "test"},
    )
    return Path(out)
