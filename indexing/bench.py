"""Search benchmark: build every index kind over N vectors, measure build time, latency, recall and size.

The vectors imitate trained embeddings rather than isotropic noise: a seeded mixture of anisotropic Gaussian
clusters (power-law cluster sizes) under a decaying spectrum, rotated off the coordinate axes, with a common
offset, or, given a trained run, its own embeddings resampled with anisotropic noise.

Recall@10 is measured against exact cosine (``Flat`` on the same normalised vectors): the fraction of the true
top 10 found in the returned top 10.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dscmr.errors import QueryError
from indexing._checks import l2_normalize
from indexing.binary_index import BinaryIndex
from indexing.float_index import FloatIndex
from indexing.hashing import LinearHasher, fit_hasher
from indexing.hybrid import hybrid_search

DEFAULT_FACTORIES = ("HNSW32", "IVF1024,Flat")
EF_SEARCH = (16, 32, 64, 128)
NPROBE = (8, 16, 32, 64)
SHORTLISTS = (100, 200, 500, 1000)


def clustered_embeddings(
    n: int, d: int, *, seed: int = 0, n_clusters: int | None = None, decay: float = 0.8, chunk: int = 1 << 17
) -> np.ndarray:
    """``(n, d)`` float32 vectors from a mixture of anisotropic Gaussian clusters with a decaying spectrum.

    Args:
        n: Number of vectors.
        d: Dimension.
        seed: Seed of the mixture (the same seed gives the same distribution; draws depend on n).
        n_clusters: Mixture components (default ``clip(sqrt(n), 16, 1024)``).
        decay: Spectrum ``sigma_j = (1 + j) ** -decay``.
        chunk: Vectors generated at once.
    """
    rng = np.random.default_rng(seed)
    c = n_clusters or int(np.clip(np.sqrt(n), 16, 1024))
    spectrum = (1.0 + np.arange(d)) ** -decay  # (d,)
    centres = rng.standard_normal((c, d)) * spectrum * 1.5  # (c, d)
    shapes = spectrum * np.exp(0.5 * rng.standard_normal((c, d)))  # per-cluster anisotropy (c, d)
    weights = (1.0 + np.arange(c)) ** -0.7
    weights /= weights.sum()
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))  # a shared rotation off the axes
    offset = rng.standard_normal(d) * spectrum * 0.5  # common component of real embeddings
    draw = np.random.default_rng(seed + 1_000_003 * (n + 1))
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        comp = draw.choice(c, size=m, p=weights)
        x = centres[comp] + draw.standard_normal((m, d)) * shapes[comp] * 0.6 + offset
        out[start : start + m] = x @ q.T
    return out


def run_embeddings(run: Any, n: int, d: int, *, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """``n`` vectors around a run's own embeddings (all splits, both modalities): a random base embedding plus
    Gaussian noise scaled per principal direction, projected to the top ``d`` principal directions."""
    import torch

    from dscmr.data import load_dataset
    from dscmr.train import encode_split

    ds = load_dataset(run.config.data)
    parts = [torch.cat(encode_split(run.model, s)) for s in (ds.train, ds.val, ds.test) if len(s)]
    base = l2_normalize(torch.cat(parts).numpy())
    if d > base.shape[1]:
        raise QueryError(f"--dim {d} exceeds the run's embedding dimension {base.shape[1]}")
    mean = base.mean(axis=0)
    _, s, vt = np.linalg.svd(base - mean, full_matrices=False)
    proj = vt[:d]  # (d, D) principal directions
    sd = s[:d] / np.sqrt(base.shape[0])  # per-direction std
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, base.shape[0], size=n)
    low = (base - mean) @ proj.T  # (N, d)
    return (low[pick] + rng.standard_normal((n, d)) * sd * noise).astype(np.float32)


def _file_bytes(save: Callable[[str], None]) -> int:
    with tempfile.TemporaryDirectory(prefix="dscmr-bench-") as tmp:
        path = Path(tmp) / "index"
        save(str(path))
        return path.stat().st_size


def recall_at(I: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each row's true top k found in the returned top k."""
    hits = [len(set(a[:k].tolist()) & set(b[:k].tolist())) for a, b in zip(I, gt, strict=True)]
    return float(np.mean(hits) / k)


def _latency(search_one: Callable[[int], Any], nq: int) -> tuple[float, float]:
    times = np.empty(nq)
    for i in range(nq):
        t0 = time.perf_counter()
        search_one(i)
        times[i] = time.perf_counter() - t0
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def _float_search(fi: FloatIndex, k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda q: fi.search(q, k)[1]


def _hybrid_search(
    bi: BinaryIndex, vec: np.ndarray, hasher: LinearHasher, k: int, kp: int
) -> Callable[[np.ndarray], np.ndarray]:
    return lambda q: hybrid_search(bi, vec, hasher.encode(q), q, k, shortlist=kp)[1]


@dataclass
class _Row:
    index: str
    recall_at_10: float
    p50_ms: float
    p99_ms: float
    batch_ms_per_query: float
    build_seconds: float
    bytes_per_item: float
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "recall_at_10": round(self.recall_at_10, 4),
            "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "batch_ms_per_query": round(self.batch_ms_per_query, 4),
            "build_seconds": round(self.build_seconds, 3),
            "bytes_per_item": round(self.bytes_per_item, 2),
            "params": self.params,
        }


def bench_search(
    n: int,
    d: int,
    *,
    factories: tuple[str, ...] = DEFAULT_FACTORIES,
    bits: int = 64,
    hash_method: str = "itq",
    nq: int = 200,
    k: int = 10,
    seed: int = 0,
    ef_construction: int = 40,
    ef_search: tuple[int, ...] = EF_SEARCH,
    nprobe: tuple[int, ...] = NPROBE,
    shortlists: tuple[int, ...] = SHORTLISTS,
    vectors: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build ``Flat``, each float factory, ``BFlat`` and ``hybrid`` over ``n`` vectors and measure them.

    Args:
        n: Database size.
        d: Dimension.
        factories: Float ANN factory strings (HNSW rows sweep ``ef_search``; IVF rows sweep ``nprobe``).
        bits: Code length of the binary and hybrid kinds.
        hash_method: ``sign`` or ``itq`` for the codes.
        nq: Queries (latency over single queries; recall against exact cosine).
        k: Results per query (recall@k).
        seed: Data seed.
        ef_construction: HNSW build parameter.
        ef_search: HNSW efSearch values to report.
        nprobe: IVF nprobe values to report.
        shortlists: Hybrid shortlist lengths k' to report.
        vectors: ``(n + nq, d)`` vectors to use instead of the synthetic mixture (the last nq are queries).
        log: Progress messages.

    Returns:
        ``{"n", "dim", "nq", "k", "bits", "threads", "results": [row, ...]}``.
    """
    say = log or (lambda msg: None)
    if vectors is None:
        say(f"generating {n} + {nq} clustered {d}-d vectors")
        vectors = clustered_embeddings(n + nq, d, seed=seed)
    xb, xq = vectors[:n], np.ascontiguousarray(vectors[n : n + nq])
    rows: list[_Row] = []

    def measure(name: str, search: Callable[[np.ndarray], np.ndarray], build_s: float, nbytes: float, **p: Any):
        search(xq[:1])  # warm-up
        p50, p99 = _latency(lambda i: search(xq[i : i + 1]), nq)
        t0 = time.perf_counter()
        I = search(xq)
        batch = (time.perf_counter() - t0) / nq * 1e3
        row = _Row(name, recall_at(I, gt, k), p50, p99, batch, build_s, nbytes, dict(p))
        say(f"{name} {p}: recall@{k} {row.recall_at_10:.4f}  p50 {p50:.3f} ms  p99 {p99:.3f} ms  batch {batch:.4f}")
        rows.append(row)

    # exact cosine: the ground truth and the Flat row
    t0 = time.perf_counter()
    flat = FloatIndex(d, "Flat")
    flat.add(xb)
    flat_s = time.perf_counter() - t0
    say("exact ground truth")
    _, gt = flat.search(xq, k)
    measure("Flat", lambda q: flat.search(q, k)[1], flat_s, _file_bytes(flat.save) / n)

    for factory in factories:
        say(f"building {factory}")
        t0 = time.perf_counter()
        fi = FloatIndex(d, factory)
        hnsw = getattr(faiss.downcast_index(fi.index), "hnsw", None)
        if hnsw is not None:
            hnsw.efConstruction = ef_construction
        fi.train(xb, seed=seed)
        fi.add(xb)
        build_s = time.perf_counter() - t0
        nbytes = _file_bytes(fi.save) / n
        is_ivf = faiss.try_extract_index_ivf(fi.index) is not None
        sweep: list[dict[str, Any]] = [{}]
        if hnsw is not None:
            sweep = [{"efSearch": e} for e in ef_search]
        elif is_ivf:
            sweep = [{"nprobe": p} for p in nprobe]
        for params in sweep:
            fi.set_params(**params)
            measure(factory, _float_search(fi, k), build_s, nbytes, **params)
        del fi

    say(f"building BFlat ({hash_method}, {bits} bits)")
    t0 = time.perf_counter()
    hasher = fit_hasher(hash_method, xb[: min(n, 100_000)], bits, seed=seed)
    bi = BinaryIndex(bits, "BFlat")
    bi.add(hasher.encode(xb))
    bin_s = time.perf_counter() - t0
    code_bytes = _file_bytes(bi.save) / n
    measure("BFlat", lambda q: bi.search(hasher.encode(q), k)[1], bin_s, code_bytes, method=hash_method, bits=bits)

    t0 = time.perf_counter()
    vec = l2_normalize(xb)
    hyb_s = bin_s + time.perf_counter() - t0
    for kp in shortlists:
        measure(
            "hybrid",
            _hybrid_search(bi, vec, hasher, k, kp),
            hyb_s,
            code_bytes + 4 * d,
            method=hash_method,
            bits=bits,
            shortlist=kp,
        )
    return {
        "n": n,
        "dim": d,
        "nq": nq,
        "k": k,
        "bits": bits,
        "threads": faiss.omp_get_max_threads(),
        "results": [r.to_dict() for r in rows],
    }
