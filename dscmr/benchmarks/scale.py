"""Scale benchmark (``dscmr bench scale``): sharded against unsharded index builds, and a memory-mapped bundle's
serving cost, on synthetic vectors generated a slice at a time.

For each index kind (``IVF-Flat``; ``IVF-PQ``, stored with the float vectors so that its top k' is re-ranked by exact
cosine, ``refine``; ``BFlat-64``: ITQ codes re-ranked by the float vectors) the bundle is
built twice, each time in a fresh child process: **unsharded** (the child generates all N vectors, then
``build_bundle``) and **sharded** (``build_sharded`` with ``--shards S``; the shard jobs generate their own slices,
in the child one after the other or, with ``--ray``, as Ray tasks). Both train on the same seeded sample, so the
two bundles hold the same trained indexes. A build's ``peak_rss_mb`` is the largest peak RSS (``getrusage``
``ru_maxrss``) of the processes that did its work: the child, and for a Ray build each worker that ran a shard
(the max over processes, not their sum; Ray's own daemons are not counted). Then a fresh child loads each bundle
memory-mapped and runs ``--queries`` single queries, one thread, at the manifest's default search settings
(``nprobe``, hybrid shortlist): ``p50_ms``, ``recall_at_10`` against exact cosine (a chunked brute-force scan), and
its RSS after the queries (``serve_rss_mb``, file-backed pages of the mapped files included) against the bundle's
``disk_bytes``; ``loaded_rss_growth_mb`` and ``serve_rss_growth_mb`` are what loading, then the queries, added to
the process's RSS (the imports excluded). IVF-PQ also reports ``no_refine``: the same queries without re-ranking.

The data: a seeded mixture of anisotropic Gaussian clusters (power-law cluster sizes, a decaying spectrum, a
random rotation), drawn in blocks of 65,536 rows, block b from its own seed, so any slice can be generated
anywhere without the rest. Queries are fresh draws from the same mixture.

The ``encode`` block times ``dscmr encode`` on the built-in ``shapes`` dataset in this process and on 2 Ray workers.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import UsageError

log = logging.getLogger(__name__)

BLOCK = 1 << 16  # rows generated from one seed
KINDS = ("IVF-Flat", "IVF-PQ", "BFlat-64")
_SHA = "0" * 64


@lru_cache(maxsize=4)
def _mixture(total: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centres ``(c, d)``, per-cluster scales ``(c, d)``, weights ``(c,)`` and the rotation ``(d, d)``."""
    rng = np.random.default_rng([seed, 7])
    c = int(np.clip(np.sqrt(total), 16, 1024))
    spectrum = (1.0 + np.arange(d)) ** -0.8  # (d,)
    centres = rng.standard_normal((c, d)) * spectrum * 1.5
    scales = spectrum * np.exp(0.5 * rng.standard_normal((c, d))) * 0.6
    weights = (1.0 + np.arange(c)) ** -0.7
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return centres + rng.standard_normal(d) * spectrum * 0.5, scales, weights / weights.sum(), q


@dataclass(frozen=True)
class SyntheticRows:
    """Rows ``[start, stop)`` of a seeded clustered data set of ``total`` rows (a picklable ``RowSource``).

    Args:
        total: Rows of the whole data set (it sets the number of clusters).
        d: Dimension.
        seed: Seed of the mixture and of every block.
        start: First row of this part.
        stop: End of this part (default: ``total``).
    """

    total: int
    d: int
    seed: int = 0
    start: int = 0
    stop: int = -1

    @property
    def n(self) -> int:
        return (self.total if self.stop < 0 else self.stop) - self.start

    def draw(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """``m`` fresh rows of the mixture, float32 ``(m, d)``."""
        centres, scales, weights, q = _mixture(self.total, self.d, self.seed)
        comp = rng.choice(len(weights), size=m, p=weights)
        x = centres[comp] + rng.standard_normal((m, self.d)) * scales[comp]  # (m, d)
        return (x @ q.T).astype(np.float32)

    def block(self, b: int) -> np.ndarray:
        """Block ``b`` of the whole data set (rows ``[b * BLOCK, (b + 1) * BLOCK)``)."""
        return self.draw(min(BLOCK, self.total - b * BLOCK), np.random.default_rng([self.seed, 11, b]))

    def part(self, start: int, stop: int) -> SyntheticRows:
        return SyntheticRows(self.total, self.d, self.seed, self.start + start, self.start + stop)

    def read(self) -> np.ndarray:
        a, z = self.start, self.start + self.n
        out = np.empty((self.n, self.d), dtype=np.float32)
        for b in range(a // BLOCK, (z - 1) // BLOCK + 1 if z > a else a // BLOCK):
            lo, hi = max(a, b * BLOCK), min(z, (b + 1) * BLOCK)
            out[lo - a : hi - a] = self.block(b)[lo - b * BLOCK : hi - b * BLOCK]
        return out

    def take(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64) + self.start
        out = np.empty((ids.size, self.d), dtype=np.float32)
        blocks = ids // BLOCK
        for b in np.unique(blocks):
            where = np.flatnonzero(blocks == b)
            out[where] = self.block(int(b))[ids[where] - b * BLOCK]
        return out

    def queries(self, nq: int) -> np.ndarray:
        return self.draw(nq, np.random.default_rng([self.seed, 13]))


class IdItems:
    """``["0", "1", ..., str(n - 1)]`` without holding it: the items of a synthetic bundle."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> list[str]:
        return [str(i) for i in range(*s.indices(self.n))]


def nlist_for(n: int) -> int:
    """IVF lists for n vectors: the power of two nearest sqrt(n), from 16 to 65,536."""
    return int(2 ** np.clip(round(math.log2(max(n, 1)) / 2), 4, 16))


def spec_for(kind: str, n: int, d: int) -> Any:
    """The ``BuildSpec`` of an index kind at this size."""
    from dscmr.indexing.build import BuildSpec

    nlist = nlist_for(n)
    if kind == "IVF-Flat":
        return BuildSpec(float_factory=f"IVF{nlist},Flat")
    if kind == "IVF-PQ":
        m = d // 4 if d % 4 == 0 else d
        return BuildSpec(float_factory=f"IVF{nlist},PQ{m}")
    if kind == "BFlat-64":
        return BuildSpec(float_factory=None, binary="itq", bits=64)
    raise UsageError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")


def exact_topk(rows: SyntheticRows, xq: np.ndarray, k: int = 10) -> np.ndarray:
    """Ids of the exact cosine top ``k`` of each query, by a brute-force scan a block at a time."""
    from dscmr.indexing.arrays import l2_normalize, sort_by_distance_then_id

    qn = l2_normalize(xq)
    best_s = np.full((qn.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.full((qn.shape[0], k), -1, dtype=np.int64)
    for a in range(0, rows.n, BLOCK):
        xb = l2_normalize(rows.part(a, min(a + BLOCK, rows.n)).read())
        s = qn @ xb.T  # (nq, block)
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, top + a], axis=1)
        cand_s, cand_i = sort_by_distance_then_id(cand_s, cand_i, descending=True)
        best_s, best_i = cand_s[:, :k], cand_i[:, :k]
    return best_i


# ----------------------------------------------------------------------------------------------------------------
# Child processes: one build, or one serving probe, each measured in a fresh process


def _child(task: dict[str, Any]) -> dict[str, Any]:
    """Run ``task`` in a fresh Python process; returns the JSON it prints last."""
    cmd = [sys.executable, "-m", "dscmr.benchmarks.scale", json.dumps(task)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"benchmark child {task['op']} failed: {' | '.join(tail)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _build(task: dict[str, Any]) -> dict[str, Any]:
    """Build one bundle (sharded or not) in this process; report seconds and peak RSS."""
    import faiss

    from dscmr.benchmarks.bundle_memory import _status_mb
    from dscmr.indexing.build import build_bundle
    from dscmr.indexing.shards import HASH_TRAIN, build_sharded, peak_rss_mb, sample_ids

    faiss.omp_set_num_threads(task["threads"])
    base = _status_mb()["rss_mb"]  # the imports (torch comes with dscmr.indexing)
    rows = SyntheticRows(task["n"], task["d"], task["seed"])
    spec = spec_for(task["kind"], rows.n, rows.d)
    hash_train = rows.take(sample_ids(rows.n, HASH_TRAIN, spec.seed)) if spec.binary else None
    kw: dict[str, Any] = {"modality": "image", "kind": "id", "run_info": {"checkpoint_sha256": _SHA}, "spec": spec}
    t0 = time.perf_counter()
    if task["shards"]:
        done = build_sharded(task["out"], rows, shards=task["shards"], items=IdItems(rows.n),  # type: ignore[arg-type]
                             hash_train=hash_train, ray=task["ray"], **kw)  # fmt: skip
        jobs = [j.peak_rss_mb for j in done.jobs]
        seconds = time.perf_counter() - t0
        done.bundle.close()
        peak = max([peak_rss_mb(), *jobs])
        return {"build_seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1), "base_rss_mb": base,
                "driver_rss_mb": round(peak_rss_mb(), 1), "job_rss_mb": jobs, "mode": done.mode}  # fmt: skip
    xb = rows.read()
    b = build_bundle(task["out"], xb, items=list(IdItems(rows.n)[:]), hash_train=hash_train, **kw)
    seconds = time.perf_counter() - t0
    b.close()
    return {"build_seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "base_rss_mb": base,
            "mode": "single"}  # fmt: skip


def _serve(task: dict[str, Any]) -> dict[str, Any]:
    """Load a bundle memory-mapped and time single queries at its default settings (one thread)."""
    import faiss

    from dscmr.benchmarks.bundle_memory import _status_mb
    from dscmr.indexing.bundle import load_bundle

    faiss.omp_set_num_threads(1)
    with np.load(task["queries"]) as f:
        xq, gt = f["xq"], f["gt"]
    before = _status_mb()
    b = load_bundle(task["out"], mmap=True)
    loaded = _status_mb()
    kp = b.shortlist_for(10)
    refine = b.refine_for(10)
    p50, recall = _probe(b, xq, gt, kp)
    rss = _status_mb()
    out = {
        "p50_ms": p50,
        "recall_at_10": recall,
        "serve_rss_mb": rss["rss_mb"],
        "serve_anon_mb": rss["anon_mb"],
        "serve_rss_growth_mb": round(rss["rss_mb"] - before["rss_mb"], 1),
        "loaded_rss_growth_mb": round(loaded["rss_mb"] - before["rss_mb"], 1),
        "search": _search_used(b, kp, refine),
    }
    if refine is not None:  # the same bundle without the exact re-ranking, for comparison
        p50, recall = _probe(b, xq, gt, kp, refine=False)
        out["no_refine"] = {"p50_ms": p50, "recall_at_10": recall}
    b.close()
    return out


def _probe(b: Any, xq: np.ndarray, gt: np.ndarray, kp: int, *, refine: bool = True) -> tuple[float, float]:
    """p50 (ms) and recall@10 of single queries at the bundle's defaults (``refine=False``: the raw float index)."""
    from dscmr.benchmarks.search import recall_at
    from dscmr.indexing.hybrid import hybrid_search

    ids, ms = [], []
    for i in range(xq.shape[0]):
        q = xq[i : i + 1]
        t0 = time.perf_counter()
        if b.float_index is not None:
            I = b.search_cosine(q, 10)[1] if refine else b.float_index.search(q, 10)[1]
        else:
            I = hybrid_search(b.binary_index, b.vectors, b.hasher.encode(q), q, 10, shortlist=kp)[1]
        ms.append((time.perf_counter() - t0) * 1e3)
        ids.append(I[0])
    return round(float(np.median(ms)), 3), round(recall_at(np.stack(ids), gt, 10), 4)


def _search_used(b: Any, kp: int, refine: int | None) -> dict[str, Any]:
    if b.float_index is None:
        return {"shortlist": kp}
    used: dict[str, Any] = {"nprobe": b.manifest.search_defaults().nprobe}
    if refine is not None:
        used["refine"] = refine
    return used


# ----------------------------------------------------------------------------------------------------------------
# The benchmark


def _check(n: int, d: int, shards: int, queries: int, kinds: tuple[str, ...]) -> None:
    if n < 1000 or d < 4 or d % 4:
        raise UsageError(f"--n must be at least 1000 and --dim a multiple of 4, got n={n}, dim={d}")
    if not 2 <= shards <= n:
        raise UsageError(f"--shards must be a whole number from 2 to --n ({n}), got {shards}")
    if not 1 <= queries <= 10_000:
        raise UsageError(f"--queries must be from 1 to 10000, got {queries}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {', '.join(bad) or 'none'}")


def bench_scale(
    n: int,
    d: int,
    *,
    shards: int,
    ray: str | None = None,
    queries: int = 1000,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
    threads: int = 1,
    encode: bool = True,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Build every kind sharded and unsharded, measure each build and the memory-mapped bundles' serving.

    Args:
        n: Vectors.
        d: Dimension (a multiple of 4).
        shards: Shards of the sharded builds (at least 2).
        ray: Fill the sharded builds' shards as Ray tasks (``local``, ``auto`` or an address); None: in-process.
        queries: Single queries for p50 and recall@10.
        kinds: Index kinds (:data:`KINDS`).
        seed: Data seed.
        threads: FAISS threads of the builds (the Ray tasks split the cluster's CPUs instead).
        encode: Also time ``dscmr encode`` on ``shapes`` in-process and on 2 Ray workers.
        workdir: Where the bundles are built, created if missing (default: a temporary folder, deleted after).

    Returns:
        ``{"n", "dim", "shards", "queries", "results": [...], "encode": {...}}``.
    """
    _check(n, d, shards, queries, kinds)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    if ray is not None:
        from dscmr.corpus.ray_runner import check_ray

        check_ray(ray)
    rows = SyntheticRows(n, d, seed)
    xq = rows.queries(queries)
    t0 = time.perf_counter()
    gt = exact_topk(rows, xq)
    log.info("exact top 10 of %d queries over %d x %d in %.1f s", queries, n, d, time.perf_counter() - t0)
    results = []
    with tempfile.TemporaryDirectory(prefix="dscmr-bench-scale-", dir=workdir) as tmp:
        np.savez(Path(tmp) / "queries.npz", xq=xq, gt=gt)
        for kind in kinds:
            for s in (0, shards):
                out = Path(tmp) / f"{kind}-{s}"
                task = {"op": "build", "out": str(out), "n": n, "d": d, "seed": seed, "kind": kind, "shards": s,
                        "ray": ray if s else None, "threads": threads}  # fmt: skip
                log.info("building %s %s", kind, f"in {s} shards" if s else "unsharded")
                built = _child(task)
                served = _child({"op": "serve", "out": str(out), "queries": str(Path(tmp) / "queries.npz")})
                results.append(_result(kind, s, out, built, served))
                log.info("%s", json.dumps(results[-1]))
                _cleanup(out)
    report: dict[str, Any] = {"n": n, "dim": d, "shards": shards, "queries": queries, "ray": ray, "results": results}
    report["encode"] = bench_encode() if encode else None
    return report


def _result(kind: str, shards: int, out: Path, built: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    from dscmr.indexing.bundle import peek_manifest

    m = peek_manifest(out)
    disk = m.bytes
    return {
        "index": kind,
        "shards": shards or 1,
        "factory": m.float.factory if m.float else f"BFlat {m.binary.bits if m.binary else 0}-bit + vectors",
        "build_seconds": built["build_seconds"],
        "peak_rss_mb": built["peak_rss_mb"],
        "disk_bytes": disk,
        "p50_ms": served["p50_ms"],
        "recall_at_10": served["recall_at_10"],
        "serve_rss_mb": served["serve_rss_mb"],
        "serve_rss_growth_mb": served["serve_rss_growth_mb"],
        "serve_anon_mb": served["serve_anon_mb"],
        "serve_rss_over_disk": round(served["serve_rss_mb"] * 2**20 / disk, 4),
        "serve_growth_over_disk": round(served["serve_rss_growth_mb"] * 2**20 / disk, 4),
        "loaded_rss_growth_mb": served["loaded_rss_growth_mb"],
        "search": served["search"],
        **({"no_refine": served["no_refine"]} if "no_refine" in served else {}),
        "build": {k: v for k, v in built.items() if k not in ("build_seconds", "peak_rss_mb")},
    }


def _cleanup(out: Path) -> None:
    import shutil

    shutil.rmtree(out, ignore_errors=True)


def bench_encode(*, workers: int = 2, image_size: int = 64) -> dict[str, Any]:
    """``dscmr encode`` of the built-in ``shapes`` dataset in this process (1 thread) and on ``workers`` Ray
    workers of 1 thread each: items per second of each (an ``error`` entry where one cannot run)."""
    from dscmr.config import DataConfig
    from dscmr.corpus import encode_corpus

    out: dict[str, Any] = {"dataset": "shapes", "image_size": image_size}
    with tempfile.TemporaryDirectory(prefix="dscmr-bench-encode-") as tmp:
        cfg = DataConfig(format="shapes", image_size=image_size, cache_dir=str(Path(tmp) / "cache"))
        runs = (("in_process", {"threads": 1}), ("ray", {"ray": "local", "workers": workers, "threads": 1}))
        for name, options in runs:
            try:
                r = encode_corpus(cfg, Path(tmp) / name, shard_size=256, **options)  # type: ignore[arg-type]
            except Exception as exc:  # a missing encoder or Ray: report it, keep the index figures
                out[name] = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
                continue
            out[name] = {
                "workers": r.workers,
                "threads": r.threads,
                "items": r.images_encoded + r.texts_encoded,
                "encode_seconds": r.encode_seconds,
                "items_per_second": round(r.items_per_second, 2),
            }
    return out


def main(argv: list[str]) -> None:
    """The child process: ``python -m dscmr.benchmarks.scale '{"op": "build" | "serve", ...}'``."""
    task = json.loads(argv[0])
    result = _build(task) if task["op"] == "build" else _serve(task)
    print(json.dumps(result))


if __name__ == "__main__":  # run the importable module's main, so Ray pickles its classes by reference
    from dscmr.benchmarks.scale import main as module_main

    module_main(sys.argv[1:])
