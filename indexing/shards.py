"""Build an index bundle in shards, in this process or on Ray (`add_to_bundle` extends its smallest shard).

A sharded build trains once, in the driver, on a seeded sample: the float index (IVF coarse quantizer, PQ
codebooks), the binary index (BIVF) and the ``sign`` / ``itq`` hasher. The trained, empty indexes are serialised
and every shard job deserialises them, adds its slice of the items (read a chunk at a time, so a job holds its
shard's index and one chunk) and writes ``float-0000i.faiss`` / ``binary-0000i.faiss`` into the staging folder;
with a binary index it also writes its rows of the global ``vectors.npy``. The driver writes ``items.sqlite`` and
the manifest. Jobs run one after the other in this process, or as Ray tasks (``ray="local"``, ``"auto"`` or an
address; Ray schedules them, at most CPUs / threads at once). The staging folder must be on storage every node
sees (on one machine, any local folder).

Every index kind stays sharded: Flat, BFlat and IVF shards are searched together with an exact k-way merge
(:mod:`dscmr.indexing.sharded_index`), so a bundle's search never needs one process to hold, or one file to
merge, the whole index, and an add rewrites one shard only. With the same trained indexes, the result equals the
single-process build (same ids and distances; for IVF at the same ``nprobe``).

Example:
    >>> from dscmr.indexing.shards import build_sharded_bundle
    >>> b = build_sharded_bundle("bundles/big", xb, shards=4, ray="local", modality="image", items=names,
    ...                          kind="path", run_info={"checkpoint_sha256": sha}, spec=BuildSpec())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from dscmr.errors import DataError, UsageError
from dscmr.indexing.arrays import as_float_matrix, l2_normalize
from dscmr.indexing.binary_index import BinaryIndex
from dscmr.indexing.build import BuildProgress, BuildSpec, _check_items, _hasher, _metrics, _run_info
from dscmr.indexing.bundle import IndexBundle, finish_manifest, load_bundle, now, write_items
from dscmr.indexing.float_index import FloatIndex, train_sample_size
from dscmr.indexing.hashing import LinearHasher
from dscmr.indexing.manifest import (
    BINARY_FILE,
    FLOAT_FILE,
    HASHER_FILE,
    ITEMS_FILE,
    MODALITIES,
    SHARDED_FORMAT_VERSION,
    VECTORS_FILE,
    BinaryEntry,
    FloatEntry,
    Manifest,
    RunInfo,
    ShardInfo,
    Source,
    shard_file,
)
from dscmr.indexing.swap import staging_dir, writer_lock

log = logging.getLogger(__name__)

CHUNK = 1 << 17  # rows a shard job reads, adds and writes at once
HASH_TRAIN = 100_000  # rows the sign / itq hasher is fitted on when no training embeddings are given
ITEMS_CHUNK = 100_000  # items written to the items table per transaction


class RowSource(Protocol):
    """Raw item embeddings that can be read a slice at a time (and pickled, for Ray).

    Attributes:
        n: Rows.
        d: Dimension.
    """

    @property
    def n(self) -> int: ...

    @property
    def d(self) -> int: ...

    def part(self, start: int, stop: int) -> RowSource:
        """The rows ``[start, stop)`` as a source of their own (cheap to pickle)."""
        ...

    def read(self) -> np.ndarray:
        """All rows, float32 ``(n, d)``."""
        ...

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (sorted), float32 ``(len(ids), d)``."""
        ...


@dataclass(frozen=True)
class ArrayRows:
    """A :class:`RowSource` over an array in memory (a part pickles only its own rows)."""

    xb: np.ndarray

    @property
    def n(self) -> int:
        return int(self.xb.shape[0])

    @property
    def d(self) -> int:
        return int(self.xb.shape[1])

    def part(self, start: int, stop: int) -> ArrayRows:
        return ArrayRows(self.xb[start:stop])

    def read(self) -> np.ndarray:
        return as_float_matrix(self.xb, what="item embeddings")

    def take(self, ids: np.ndarray) -> np.ndarray:
        return as_float_matrix(self.xb[ids], what="item embeddings")


@dataclass(frozen=True)
class ShardJob:
    """One shard to fill: rows ``[start, stop)`` of the items, added to copies of the trained, empty indexes."""

    index: int
    start: int
    stop: int
    rows: Any  # RowSource of rows [start, stop)
    folder: str
    float_template: np.ndarray | None = None  # faiss.serialize_index of the trained, empty float index
    binary_template: np.ndarray | None = None
    factory: str = ""
    binary_factory: str = ""
    bits: int = 0
    hasher: LinearHasher | None = None
    vectors: bool = False  # write the normalised rows into the global vectors.npy
    threads: int = 0  # FAISS threads (0: leave as is)


@dataclass(frozen=True)
class ShardDone:
    """What a shard job reports: its rows, its process's peak RSS (MiB) and its wall time."""

    index: int
    rows: int
    peak_rss_mb: float
    seconds: float
    pid: int


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (``getrusage``: Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fill_shard(job: ShardJob) -> ShardDone:
    """Add a shard's rows to copies of the trained indexes and write its files (a Ray task, or called in-process)."""
    t0 = time.perf_counter()
    if job.threads:
        faiss.omp_set_num_threads(job.threads)
    folder = Path(job.folder)
    d = job.rows.d
    fi = bi = None
    if job.float_template is not None:
        fi = FloatIndex(d, job.factory, index=faiss.deserialize_index(job.float_template))
    if job.binary_template is not None:
        bi = BinaryIndex(job.bits, job.binary_factory, index=faiss.deserialize_index_binary(job.binary_template))
    n = job.stop - job.start
    for a in range(0, n, CHUNK):
        x = job.rows.part(a, min(a + CHUNK, n)).read()  # (chunk, d) raw
        if fi is not None:
            fi.add(x)
        if bi is not None and job.hasher is not None:
            bi.add(job.hasher.encode(x))
        if job.vectors:
            write_rows(folder / VECTORS_FILE, job.start + a, l2_normalize(x))
    if fi is not None:
        fi.save(folder / shard_file("float", job.index))
    if bi is not None:
        bi.save(folder / shard_file("binary", job.index))
    return ShardDone(job.index, n, round(peak_rss_mb(), 1), round(time.perf_counter() - t0, 3), os.getpid())


def write_rows(path: Path, first: int, rows: np.ndarray) -> None:
    """Write float32 ``rows`` at row ``first`` of the ``.npy`` matrix ``path``, in place.

    Plain writes at an offset, not a memory map: the written pages are page cache, not this process's memory.
    """
    with open(path, "r+b") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh)
        if dtype != np.float32 or len(shape) != 2 or shape[1] != rows.shape[1] or first + rows.shape[0] > shape[0]:
            raise DataError(f"{path} is not the ({first + rows.shape[0]}+, {rows.shape[1]}) float32 matrix expected")
        fh.seek(fh.tell() + first * rows.shape[1] * 4)
        fh.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous slices of ``n`` rows, sizes differing by at most one.

    Raises:
        UsageError: ``shards`` is not between 1 and ``n``.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= max(n, 1):
        raise UsageError(f"--shards must be a whole number from 1 to the number of items ({n}), got {shards!r}")
    edges = [n * i // shards for i in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def sample_ids(n: int, size: int, seed: int) -> np.ndarray:
    """The seeded sample ``FloatIndex.train`` / ``fit_itq`` / ``BinaryIndex.train`` draw from n rows (sorted)."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _train_float(rows: RowSource, spec: BuildSpec, progress: BuildProgress) -> FloatIndex | None:
    """The trained, empty float index, trained on the sample a single-process build would draw."""
    if spec.float_factory is None:
        return None
    fi = FloatIndex(rows.d, spec.float_factory)
    if not fi.is_trained:
        progress(f"train {spec.float_factory}", 0, 1)
        used = fi.train(rows.take(sample_ids(rows.n, train_sample_size(fi.index, rows.n), spec.seed)), seed=spec.seed)
        progress(f"train {spec.float_factory} ({used} vectors)", 1, 1)
    if spec.float_params:
        fi.set_params(**dict(spec.float_params))
    return fi


def _train_binary(rows: RowSource, hasher: LinearHasher, spec: BuildSpec) -> BinaryIndex:
    """The trained, empty binary index (BIVF: trained on the codes of the seeded sample ``BinaryIndex.train`` draws)."""
    bi = BinaryIndex(spec.bits, spec.binary_factory)
    if not bi.index.is_trained:
        bi.train(hasher.encode(rows.take(sample_ids(rows.n, HASH_TRAIN, spec.seed))), seed=spec.seed)
    return bi


@dataclass(frozen=True)
class ShardedBuild:
    """What :func:`build_sharded` did: the bundle, the shard jobs' reports and where they ran.

    Attributes:
        bundle: The loaded bundle.
        jobs: Each shard job's report, by shard.
        mode: ``in-process`` or ``ray``.
        driver_peak_rss_mb: This process's peak RSS after the build (MiB).
    """

    bundle: IndexBundle
    jobs: tuple[ShardDone, ...]
    mode: str
    driver_peak_rss_mb: float


def build_sharded(
    out: str | Path,
    rows: RowSource,
    *,
    shards: int,
    modality: str,
    items: Sequence[str],
    kind: str,
    run_info: RunInfo | dict[str, Any],
    spec: BuildSpec,
    labels: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    hash_train: np.ndarray | None = None,
    learned: LinearHasher | None = None,
    classes: list[str] | None = None,
    ray: str | None = None,
    threads: int = 0,
    progress: BuildProgress | None = None,
    verify: bool = False,
) -> ShardedBuild:
    """Build a sharded bundle at ``out`` from ``rows`` (atomically, under the bundle's writer lock).

    Args:
        out: Bundle folder.
        rows: The raw item embeddings, read a slice at a time (:class:`ArrayRows` for an array).
        shards: Number of shards (1 to the number of items).
        modality, items, kind, run_info, spec, labels, source, learned, classes, verify: As
            :func:`~dscmr.indexing.build.build_bundle`.
        hash_train: Embeddings the ``sign`` / ``itq`` hasher is fitted on (default: a seeded sample of
            100,000 rows).
        ray: None to fill the shards one after the other in this process; ``local``, ``auto`` or a cluster address
            to fill them as Ray tasks.
        threads: FAISS threads per shard job (default: in-process, FAISS's setting; on Ray, CPUs / parallel jobs).
        progress: ``(stage, done, total)`` callback.

    Raises:
        UsageError: A bad ``shards`` value, a row count that does not match the items, or no Ray.
    """
    progress = progress or _noop
    if modality not in MODALITIES:
        raise UsageError(f"modality must be image or text, got {modality!r}")
    bounds = shard_bounds(rows.n, shards)
    if rows.n == 0:
        raise DataError("nothing to index: the split has no items")
    if len(items) != rows.n or (labels is not None and labels.shape[0] != rows.n):
        raise UsageError(f"{rows.n} embeddings but {len(items)} items / labels; they must match row for row")
    if ray is not None:
        from dscmr.corpus.ray_runner import check_ray

        check_ray(ray)
    run = _run_info(run_info)
    fi = _train_float(rows, spec, progress)
    hasher = bi = None
    if spec.binary is not None:
        train = hash_train
        if train is None:
            size = HASH_TRAIN if spec.binary != "learned" else 2
            train = rows.take(sample_ids(rows.n, size, spec.seed))
        hasher = _hasher(spec, train, hash_train=None, learned=learned, progress=progress)
        bi = _train_binary(rows, hasher, spec)
    with writer_lock(Path(out)), staging_dir(Path(out)) as tmp:
        vectors = spec.stores_vectors
        _write_templates(tmp, fi, bi, hasher, rows=rows, vectors=vectors)
        jobs = [
            ShardJob(
                i, a, b, rows.part(a, b), str(tmp),
                float_template=faiss.serialize_index(fi.index) if fi is not None else None,
                binary_template=faiss.serialize_index_binary(bi.index) if bi is not None else None,
                factory=spec.float_factory or "", binary_factory=spec.binary_factory, bits=spec.bits,
                hasher=hasher, vectors=vectors, threads=threads,
            )
            for i, (a, b) in enumerate(bounds)
        ]  # fmt: skip
        done = run_jobs(jobs, ray=ray, threads=threads, progress=progress)
        _write_items_chunked(tmp / ITEMS_FILE, items, kind=kind, labels=labels)
        manifest = _sharded_manifest(run, rows, bounds, spec, fi, modality=modality, kind=kind, source=source)
        finish_manifest(tmp, replace(manifest, classes=tuple(classes) if classes is not None else None))
    bundle = load_bundle(out, verify=verify)
    return ShardedBuild(bundle, tuple(done), "in-process" if ray is None else "ray", round(peak_rss_mb(), 1))


def build_sharded_bundle(out: str | Path, embeddings: np.ndarray, *, shards: int, **kwargs: Any) -> IndexBundle:
    """:func:`~dscmr.indexing.build.build_bundle`, in ``shards`` shards (keyword options of :func:`build_sharded`).

    With the default ``hash_train`` the hasher is fitted on every embedding, as ``build_bundle`` does, so the
    result equals ``build_bundle``'s: the same ids and distances for every metric.
    """
    xb = _check_items(embeddings, modality=kwargs["modality"], items=kwargs["items"], labels=kwargs.get("labels"))
    if kwargs.get("hash_train") is None and kwargs["spec"].binary in ("sign", "itq"):
        kwargs["hash_train"] = xb
    return build_sharded(out, ArrayRows(xb), shards=shards, **kwargs).bundle


def _noop(stage: str, done: int, total: int) -> None:
    return None


def _write_templates(
    tmp: Path,
    fi: FloatIndex | None,
    bi: BinaryIndex | None,
    hasher: LinearHasher | None,
    *,
    rows: RowSource,
    vectors: bool,
) -> None:
    """The trained, empty indexes, the hasher, and an empty ``vectors.npy`` the jobs fill."""
    if fi is not None:
        fi.save(tmp / FLOAT_FILE)
    if bi is not None and hasher is not None:
        bi.save(tmp / BINARY_FILE)
        hasher.save(tmp / HASHER_FILE)
    if vectors:
        out = np.lib.format.open_memmap(tmp / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(rows.n, rows.d))
        del out


def _write_items_chunked(path: Path, items: Sequence[str], *, kind: str, labels: np.ndarray | None) -> None:
    for a in range(0, len(items), ITEMS_CHUNK):
        b = min(a + ITEMS_CHUNK, len(items))
        lab = None if labels is None else labels[a:b]
        write_items(path, [str(it) for it in items[a:b]], kind=kind, labels=lab, source=0, first_id=a)


def _sharded_manifest(
    run: RunInfo,
    rows: RowSource,
    bounds: list[tuple[int, int]],
    spec: BuildSpec,
    fi: FloatIndex | None,
    *,
    modality: str,
    kind: str,
    source: dict[str, Any] | None,
) -> Manifest:
    flt = FloatEntry(factory=fi.factory, ntotal=rows.n, params=dict(fi.params)) if fi is not None else None
    binary = None
    if spec.binary is not None:
        binary = BinaryEntry(method=spec.binary, bits=spec.bits, factory=spec.binary_factory)
    vectors = spec.stores_vectors
    shards = tuple(
        ShardInfo(
            ranges=((a, b - a),),
            float=shard_file("float", i) if flt is not None else None,
            binary=shard_file("binary", i) if binary is not None else None,
        )
        for i, (a, b) in enumerate(bounds)
    )
    return Manifest(
        run=run,
        modality=modality,
        dim=rows.d,
        count=rows.n,
        item_kind=kind,
        files={},
        created=now(),
        metrics=_metrics(flt, binary, vectors),
        float=flt,
        binary=binary,
        vectors_normalized=True if vectors else None,
        sources=(Source.from_description(source, first_id=0, count=rows.n),),
        format_version=SHARDED_FORMAT_VERSION,
        shards=shards,
    )


def run_jobs(
    jobs: list[ShardJob], *, ray: str | None, threads: int = 0, progress: BuildProgress | None = None
) -> list[ShardDone]:
    """Run shard jobs in this process (one after the other) or as Ray tasks; reports in shard order."""
    progress = progress or _noop
    progress("fill shards", 0, len(jobs))
    if ray is None:
        done = []
        for job in jobs:
            done.append(fill_shard(job))
            progress("fill shards", len(done), len(jobs))
        return done
    return _run_on_ray(jobs, address=ray, threads=threads, progress=progress)


def _run_on_ray(jobs: list[ShardJob], *, address: str, threads: int, progress: BuildProgress) -> list[ShardDone]:
    """Shard jobs as Ray tasks of ``threads`` CPUs each (default: the cluster's CPUs over the parallel jobs)."""
    import ray

    from dscmr.corpus.ray_runner import connect, user_error

    started = connect(address)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = threads or max(1, cpus // min(len(jobs), cpus))
        task = ray.remote(num_cpus=threads)(fill_shard)
        refs = [task.remote(replace(job, threads=threads)) for job in jobs]
        log.info("filling %d shards as Ray tasks of %d thread(s) on %d CPUs", len(jobs), threads, cpus)
        done: list[ShardDone] = []
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                done.append(ray.get(ready[0]))
                progress("fill shards", len(done), len(jobs))
        except Exception as exc:  # Ray wraps a task's exception; surface a user error as itself
            err = user_error(exc)
            if err is not None:
                raise err from None
            raise
        return sorted(done, key=lambda r: r.index)
    finally:
        if started:
            ray.shutdown()


__all__ = [
    "ArrayRows",
    "RowSource",
    "ShardDone",
    "ShardJob",
    "ShardedBuild",
    "build_sharded",
    "build_sharded_bundle",
    "fill_shard",
    "peak_rss_mb",
    "run_jobs",
    "sample_ids",
    "shard_bounds",
]
