"""Memory benchmark of a bundle: resident memory after loading and after queries, memory-mapped or read into RAM.

A synthetic bundle (``Flat`` float index, ITQ codes in ``BFlat`` and the re-rank vectors) is built once; each mode
is then measured in a fresh Python process, so one mode's pages do not count for the other: RSS (and its anonymous
and file-backed parts, from ``/proc/self/status``) after importing, after ``load_bundle`` and after ``nq`` single
queries of each metric, next to the bundle's bytes on disk. File-backed pages of a mapped bundle are page cache the
kernel can drop under pressure; anonymous pages are what the process really holds.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import UsageError

_SHA = "0" * 64
METRICS = ("hybrid", "cosine")

log = logging.getLogger(__name__)


def _status_mb() -> dict[str, float]:
    """``VmRSS``, ``RssAnon`` and ``RssFile`` of this process in MiB."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[{"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}[key]] = round(
                int(value.split()[0]) / 1024, 1
            )
    return out


def build_synthetic_bundle(out: Path, n: int, d: int, *, bits: int = 64, seed: int = 0) -> dict[str, Any]:
    """Build a ``Flat`` + ITQ ``BFlat`` + vectors bundle of ``n`` clustered vectors; returns its summary."""
    from dscmr.benchmarks.search import clustered_embeddings
    from dscmr.indexing.build import BuildSpec, build_bundle

    xb = clustered_embeddings(n, d, seed=seed)
    spec = BuildSpec(float_factory="Flat", binary="itq", bits=bits)
    b = build_bundle(out, xb, modality="image", items=[str(i) for i in range(n)], kind="id",
                     run_info={"checkpoint_sha256": _SHA}, spec=spec)  # fmt: skip
    summary = b.summary()
    b.close()
    return summary


def probe(
    path: Path, *, mmap: bool, nq: int, metrics: tuple[str, ...] = METRICS, k: int = 10, seed: int = 1
) -> dict[str, Any]:
    """Load ``path`` and run ``nq`` single queries of each metric in turn; RSS at each step (one thread)."""
    import faiss

    from dscmr.indexing.bundle import load_bundle
    from dscmr.indexing.hybrid import hybrid_search

    faiss.omp_set_num_threads(1)
    steps: dict[str, Any] = {"start": _status_mb()}
    t0 = time.perf_counter()
    b = load_bundle(path, mmap=mmap)
    steps["loaded"] = {**_status_mb(), "seconds": round(time.perf_counter() - t0, 3)}
    assert b.binary_index is not None and b.hasher is not None and b.vectors is not None and b.float_index
    rows = np.random.default_rng(seed).choice(b.count, size=nq, replace=False)
    xq = np.asarray(b.vectors[np.sort(rows)]) + 0.05 * np.random.default_rng(seed).standard_normal((nq, b.dim))
    xq = xq.astype(np.float32)
    kp = b.shortlist_for(k)
    for metric in metrics:
        t0 = time.perf_counter()
        for i in range(nq):
            q = xq[i : i + 1]
            if metric == "hybrid":
                hybrid_search(b.binary_index, b.vectors, b.hasher.encode(q), q, k, shortlist=kp)
            else:
                b.search_cosine(q, k)
        ms = (time.perf_counter() - t0) * 1e3 / nq
        steps[f"after_{nq}_{metric}"] = {**_status_mb(), "ms_per_query": round(ms, 3)}
    b.close()
    base = steps["start"]
    for step in steps.values():  # what loading and querying added to the process (imports excluded)
        step["rss_growth_mb"] = round(step["rss_mb"] - base["rss_mb"], 1)
        step["anon_growth_mb"] = round(step["anon_mb"] - base["anon_mb"], 1)
    return {"mmap": mmap, "shortlist": kp, "steps": steps}


def bench_bundle_memory(
    n: int,
    d: int,
    *,
    bits: int = 64,
    nq: int = 1000,
    seed: int = 0,
    bundle: Path | None = None,
    metrics: tuple[str, ...] = METRICS,
) -> dict[str, Any]:
    """RSS after loading and after ``nq`` queries, memory-mapped against in-RAM, with the bundle's size on disk.

    Args:
        n: Items of the synthetic bundle (ignored with ``bundle``).
        d: Dimension.
        bits: ITQ code length.
        nq: Queries per metric.
        seed: Data seed.
        bundle: Measure this existing bundle (it needs a float index, a binary index and vectors) instead.
        metrics: Metrics queried, in this order (``hybrid``, ``cosine``: an exact Flat scan reads every page).
    """
    if n < nq or nq < 1:
        raise UsageError(f"--n ({n}) must be at least --nq ({nq}), and --nq at least 1")
    if not metrics or any(m not in METRICS for m in metrics):
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {', '.join(metrics) or 'none'}")
    with tempfile.TemporaryDirectory(prefix="dscmr-bench-memory-") as tmp:
        path = bundle or Path(tmp) / "bundle"
        if bundle is None:
            log.info(f"building a {n} x {d} Flat + BFlat {bits}-bit + vectors bundle")
            build_synthetic_bundle(path, n, d, bits=bits, seed=seed)
        from dscmr.indexing.bundle import peek_manifest

        m = peek_manifest(path)
        results = []
        for mmap in (True, False):
            log.info(f"probing mmap={mmap} in a fresh process")
            cmd = [sys.executable, "-m", "dscmr.benchmarks.bundle_memory", str(path), str(int(mmap)), str(nq)]
            cmd.append(",".join(metrics))
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    disk = {name: f.bytes for name, f in m.files.items()}
    return {"n": m.count, "dim": m.dim, "nq": nq, "disk_bytes": sum(disk.values()), "files": disk, "results": results}


if __name__ == "__main__":
    chosen = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else METRICS
    print(json.dumps(probe(Path(sys.argv[1]), mmap=bool(int(sys.argv[2])), nq=int(sys.argv[3]), metrics=chosen)))
