"""Search benchmark: build every index kind over N vectors, measure build time, latency, recall and size.

The vectors imitate trained embeddings rather than isotropic noise: a seeded mixture of anisotropic Gaussian
clusters (power-law cluster sizes) under a decaying spectrum, rotated off the coordinate axes, with a common
offset, or, given a trained run, its own embeddings resampled with anisotropic noise.

Recall@10 is measured against exact cosine (``Flat`` on the same normalised vectors): the fraction of the true
top 10 found in the returned top 10.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from dscmr.errors import UsageError
from dscmr.indexing.arrays import l2_normalize
from dscmr.indexing.binary_index import BinaryIndex
from dscmr.indexing.float_index import FloatIndex
from dscmr.indexing.hashing import LinearHasher, fit_hasher
from dscmr.indexing.hybrid import hybrid_search

DEFAULT_FACTORIES = ("HNSW32", "IVF1024,Flat")
EF_SEARCH = (16, 32, 64, 128)
NPROBE = (8, 16, 32, 64)
SHORTLISTS = (100, 200, 500, 1000)

log = logging.getLogger(__name__)


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
        raise UsageError(f"--dim {d} exceeds the run's embedding dimension {base.shape[1]}")
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


@dataclass
class _Entry:
    """One index configuration under test; latency samples accumulate over the interleaved rounds."""

    name: str
    params: dict[str, Any]
    search: Callable[[np.ndarray], np.ndarray]  # queries (nq, d) -> ids (nq, k)
    build_seconds: float
    bytes_per_item: float
    setup: Callable[[], None] = lambda: None  # applies this entry's search parameters
    single_ms: list[float] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)
    ids: np.ndarray | None = None

    def run_round(self, xq: np.ndarray) -> None:
        """Time every query alone, then the whole batch."""
        self.setup()
        self.search(xq[:1])  # warm-up
        for i in range(xq.shape[0]):
            t0 = time.perf_counter()
            self.search(xq[i : i + 1])
            self.single_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        self.ids = self.search(xq)
        self.batch_ms.append((time.perf_counter() - t0) * 1e3 / xq.shape[0])


def _float_search(fi: FloatIndex, k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda q: fi.search(q, k)[1]


def _binary_search(bi: BinaryIndex, hasher: LinearHasher, k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda q: bi.search(hasher.encode(q), k)[1]


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
    bits: int | tuple[int, ...] = 64,
    hash_method: str = "itq",
    nq: int = 200,
    k: int = 10,
    seed: int = 0,
    ef_construction: int = 40,
    ef_search: tuple[int, ...] = EF_SEARCH,
    nprobe: tuple[int, ...] = NPROBE,
    shortlists: tuple[int, ...] = SHORTLISTS,
    vectors: np.ndarray | None = None,
    rounds: int = 3,
) -> dict[str, Any]:
    """Build ``Flat``, each float factory, ``BFlat`` and ``hybrid`` over ``n`` vectors and measure them.

    Args:
        n: Database size.
        d: Dimension.
        factories: Float ANN factory strings (HNSW rows sweep ``ef_search``; IVF rows sweep ``nprobe``).
        bits: Code length(s) of the binary and hybrid kinds; each gives a ``BFlat`` row and ``hybrid`` rows.
        hash_method: ``sign`` or ``itq`` for the codes.
        nq: Queries (latency over single queries; recall against exact cosine).
        k: Results per query (recall@k).
        seed: Data seed.
        ef_construction: HNSW build parameter.
        ef_search: HNSW efSearch values to report.
        nprobe: IVF nprobe values to report.
        shortlists: Hybrid shortlist lengths k' to report.
        vectors: ``(n + nq, d)`` vectors to use instead of the synthetic mixture (the last nq are queries).
        rounds: Timing rounds; each times every configuration on all ``nq`` queries, one after another, so p50 and
            p99 pool ``rounds * nq`` single-query latencies and the batch time is the median round.

    Returns:
        ``{"n", "dim", "nq", "k", "bits", "threads", "results": [row, ...]}``.
    """
    if vectors is None:
        log.info(f"generating {n} + {nq} clustered {d}-d vectors")
        vectors = clustered_embeddings(n + nq, d, seed=seed)
    xb, xq = vectors[:n], np.ascontiguousarray(vectors[n : n + nq])
    bit_list = [bits] if isinstance(bits, int) else list(bits)
    flat, gt = _exact_entry(xb, xq, k)
    entries = [
        flat,
        *_float_entries(xb, factories, k=k, seed=seed, ef_construction=ef_construction, sweeps=(ef_search, nprobe)),
        *_binary_entries(xb, bit_list, hash_method=hash_method, k=k, seed=seed, shortlists=shortlists),
    ]  # fmt: skip
    _time_rounds(entries, xq, rounds=rounds)
    return {
        "n": n,
        "dim": d,
        "nq": nq,
        "k": k,
        "bits": bit_list,
        "rounds": max(1, rounds),
        "threads": faiss.omp_get_max_threads(),
        "results": [_row(e, gt, k).to_dict() for e in entries],
    }


def _exact_entry(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[_Entry, np.ndarray]:
    """Exact cosine (``Flat``): its row and the ground-truth top k of every query."""
    n, d = xb.shape
    t0 = time.perf_counter()
    flat = FloatIndex(d, "Flat")
    flat.add(xb)
    flat_s = time.perf_counter() - t0
    log.info("exact ground truth")
    _, gt = flat.search(xq, k)
    return _Entry("Flat", {}, _float_search(flat, k), flat_s, _file_bytes(flat.save) / n), gt


def _float_entries(
    xb: np.ndarray,
    factories: tuple[str, ...],
    *,
    k: int,
    seed: int,
    ef_construction: int,
    sweeps: tuple[tuple[int, ...], tuple[int, ...]],
) -> list[_Entry]:
    """One row per float factory and search parameter (HNSW sweeps efSearch, IVF sweeps nprobe)."""
    n, d = xb.shape
    ef_search, nprobe = sweeps
    entries: list[_Entry] = []
    for factory in factories:
        log.info(f"building {factory}")
        t0 = time.perf_counter()
        fi = FloatIndex(d, factory)
        hnsw = getattr(faiss.downcast_index(fi.index), "hnsw", None)
        if hnsw is not None:
            hnsw.efConstruction = ef_construction
        fi.train(xb, seed=seed)
        fi.add(xb)
        build_s = time.perf_counter() - t0
        nbytes = _file_bytes(fi.save) / n
        sweep: list[dict[str, Any]] = [{}]
        if hnsw is not None:
            sweep = [{"efSearch": e} for e in ef_search]
        elif faiss.try_extract_index_ivf(fi.index) is not None:
            sweep = [{"nprobe": p} for p in nprobe]
        for params in sweep:
            setup = partial(fi.set_params, **params)
            entries.append(_Entry(factory, params, _float_search(fi, k), build_s, nbytes, setup))
    return entries


def _binary_entries(
    xb: np.ndarray,
    bit_list: list[int],
    *,
    hash_method: str,
    k: int,
    seed: int,
    shortlists: tuple[int, ...],
) -> list[_Entry]:
    """Per code length: a ``BFlat`` row and one ``hybrid`` row per shortlist length."""
    n, d = xb.shape
    vec = l2_normalize(xb)
    entries: list[_Entry] = []
    for b in bit_list:
        log.info(f"building BFlat ({hash_method}, {b} bits)")
        t0 = time.perf_counter()
        hasher = fit_hasher(hash_method, xb[: min(n, 100_000)], b, seed=seed)
        bi = BinaryIndex(b, "BFlat")
        bi.add(hasher.encode(xb))
        bin_s = time.perf_counter() - t0
        code_bytes = _file_bytes(bi.save) / n
        tag = {"method": hash_method, "bits": b}
        entries.append(_Entry("BFlat", tag, _binary_search(bi, hasher, k), bin_s, code_bytes))
        for kp in shortlists:
            search = _hybrid_search(bi, vec, hasher, k, kp)
            entries.append(_Entry("hybrid", {**tag, "shortlist": kp}, search, bin_s, code_bytes + 4 * d))
    return entries


def _time_rounds(entries: list[_Entry], xq: np.ndarray, *, rounds: int) -> None:
    """Rounds interleave the configurations, so a slow spell of the machine hits them all alike."""
    for r in range(max(1, rounds)):
        log.info(f"timing round {r + 1}/{max(1, rounds)}: {len(entries)} configurations x {xq.shape[0]} queries")
        for e in entries:
            e.run_round(xq)


def _row(e: _Entry, gt: np.ndarray, k: int) -> _Row:
    """Recall against the exact top k, latency percentiles, batch time, build time and size of one entry."""
    assert e.ids is not None
    single = np.asarray(e.single_ms)
    row = _Row(
        e.name,
        recall_at(e.ids, gt, k),
        float(np.percentile(single, 50)),
        float(np.percentile(single, 99)),
        float(np.median(e.batch_ms)),
        e.build_seconds,
        e.bytes_per_item,
        e.params,
    )
    log.info(
        f"{e.name} {e.params}: recall@{k} {row.recall_at_10:.4f}  p50 {row.p50_ms:.3f} ms  p99 {row.p99_ms:.3f} ms"
    )
    return row


def search_benchmark(
    n: int,
    d: int,
    *,
    threads: int = 1,
    run: str | Path | None = None,
    nq: int = 200,
    rounds: int = 3,
    seed: int = 0,
    factories: tuple[str, ...] = (),
    **options: Any,
) -> dict[str, Any]:
    """``dscmr bench search``: check the sizes, pin every thread pool to ``threads``, draw the vectors (clustered,
    or around a run's embeddings) and run :func:`bench_search`.

    Args:
        n: Database size.
        d: Dimension.
        threads: FAISS, torch and BLAS threads (latency is per this many).
        run: Run folder whose embeddings the vectors are drawn around (None: the clustered mixture).
        nq: Queries.
        rounds: Timing rounds.
        seed: Data seed.
        factories: Float ANN factories (empty: :data:`DEFAULT_FACTORIES`).
        options: Other keyword options of :func:`bench_search`.

    Returns:
        :func:`bench_search`'s report plus ``data`` (``"clustered"`` or ``"run PATH"``).

    Raises:
        UsageError: A size that is not positive, or ``d`` above the run's embedding dimension.
    """
    if n <= 0 or d <= 0 or nq <= 0 or rounds <= 0:
        raise UsageError("--n, --dim, --nq and --rounds must be positive")
    import torch
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    threadpool_limits(threads)  # numpy's BLAS too
    vectors = None
    if run is not None:
        from dscmr.train import load_run

        vectors = run_embeddings(load_run(run), n + nq, d, seed=seed)
    report = bench_search(
        n, d, factories=factories or DEFAULT_FACTORIES, nq=nq, rounds=rounds, seed=seed, vectors=vectors, **options
    )
    report["data"] = f"run {run}" if run else "clustered"
    return report
