"""Build and extend index bundles, from arrays or from a trained run and a dataset split."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import DataError, IndexBundleError, UsageError
from dscmr.indexing.arrays import as_float_matrix, check_bits, l2_normalize
from dscmr.indexing.binary_index import DEFAULT_BINARY_FACTORY, BinaryIndex
from dscmr.indexing.bundle import IndexBundle, finish_manifest, load_bundle, now, write_items, write_vectors
from dscmr.indexing.float_index import DEFAULT_FACTORY, FloatIndex
from dscmr.indexing.hashing import HASH_METHODS, LinearHasher, fit_hasher
from dscmr.indexing.manifest import (
    BINARY_FILE,
    FLOAT_FILE,
    HASHER_FILE,
    ITEMS_FILE,
    MODALITIES,
    VECTORS_FILE,
    BinaryEntry,
    FloatEntry,
    Manifest,
    RunInfo,
    Source,
    is_lossy,
)
from dscmr.indexing.swap import staging_dir, writer_lock

log = logging.getLogger(__name__)

# progress(stage, done, total); the CLI draws it as a bar.
BuildProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BuildSpec:
    """What to put in a bundle.

    Attributes:
        float_factory: ``faiss.index_factory`` string of the float index, or None for no float index.
        binary: Hash method (``sign``, ``itq``, ``learned``), or None for no binary index.
        bits: Code length B (a multiple of 8).
        binary_factory: ``faiss.index_binary_factory`` string.
        seed: Seed of training samples and random projections.
        float_params: Search parameters stored with the float index (``efSearch``, ``nprobe``).
        keep_vectors: With a binary index or a lossy float index (PQ, SQ), also store the float vectors (4 d bytes
            per item, memory-mapped when served) to re-rank a shortlist by exact cosine: hybrid search, and the
            float index's ``refine``. Without them a binary-only bundle costs B / 8 bytes per item plus the items
            table, and a PQ bundle its codes.
    """

    float_factory: str | None = DEFAULT_FACTORY
    binary: str | None = None
    bits: int = 64
    binary_factory: str = DEFAULT_BINARY_FACTORY
    seed: int = 0
    float_params: tuple[tuple[str, float], ...] = ()
    keep_vectors: bool = True

    def __post_init__(self) -> None:
        if self.float_factory is None and self.binary is None:
            raise UsageError("a bundle needs a float index (--float FACTORY) or a binary one (--binary METHOD)")
        if self.binary is not None:
            if self.binary not in HASH_METHODS:
                raise UsageError(f"unknown hash method {self.binary!r}; use one of {', '.join(HASH_METHODS)}")
            check_bits(self.bits)

    @property
    def stores_vectors(self) -> bool:
        """Whether the bundle holds ``vectors.npy``: ``keep_vectors`` and an index that re-ranks with them."""
        lossy = self.float_factory is not None and is_lossy(self.float_factory)
        return self.keep_vectors and (self.binary is not None or lossy)

    @classmethod
    def from_options(
        cls,
        *,
        float_factory: str | None = None,
        no_float: bool = False,
        binary: str | None = None,
        bits: int | None = None,
        binary_factory: str = DEFAULT_BINARY_FACTORY,
        no_vectors: bool = False,
        ef_search: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
        learned_bits: int = 0,
    ) -> BuildSpec:
        """The spec of ``dscmr index build``'s options.

        Args:
            float_factory: ``--float`` (default ``Flat``); ignored with ``no_float``.
            no_float: ``--no-float``: a binary index only (needs ``binary``).
            binary: ``--binary`` hash method.
            bits: ``--bits`` (default: the run's hash width for ``learned``, else 64).
            binary_factory: ``--binary-factory``.
            no_vectors: ``--no-vectors``.
            ef_search: ``--ef-search`` stored with the float index.
            nprobe: ``--nprobe`` stored with the float index.
            seed: ``--seed``.
            learned_bits: The run's hash layer width (0: none).

        Raises:
            UsageError: ``no_float`` without ``binary``, or an invalid method or code length.
        """
        if no_float and binary is None:
            raise UsageError("--no-float needs --binary METHOD")
        if bits is None:
            bits = learned_bits if binary == "learned" and learned_bits else 64
        params = tuple((k, float(v)) for k, v in (("efSearch", ef_search), ("nprobe", nprobe)) if v is not None)
        return cls(
            float_factory=None if no_float else (float_factory or DEFAULT_FACTORY),
            binary=binary,
            bits=bits,
            binary_factory=binary_factory,
            seed=seed,
            float_params=params,
            keep_vectors=not no_vectors,
        )


def _noop(stage: str, done: int, total: int) -> None:
    return None


def _check_items(embeddings: np.ndarray, *, modality: str, items: list[str], labels: np.ndarray | None) -> np.ndarray:
    """The item embeddings as float32 ``(n, d)``, with one item string (and label row) per row."""
    if modality not in MODALITIES:
        raise UsageError(f"modality must be image or text, got {modality!r}")
    xb = as_float_matrix(embeddings, what="item embeddings")
    n = xb.shape[0]
    if n == 0:
        raise DataError("nothing to index: the split has no items")
    if len(items) != n or (labels is not None and labels.shape[0] != n):
        raise UsageError(f"{n} embeddings but {len(items)} items / labels; they must match row for row")
    return xb


def _write_float(tmp: Path, xb: np.ndarray, spec: BuildSpec, progress: BuildProgress) -> FloatEntry | None:
    """Train and fill the float index; write ``float.faiss``."""
    if spec.float_factory is None:
        return None
    fi = FloatIndex(xb.shape[1], spec.float_factory)
    if not fi.is_trained:
        progress(f"train {spec.float_factory}", 0, 1)
        used = fi.train(xb, seed=spec.seed)
        progress(f"train {spec.float_factory} ({used} vectors)", 1, 1)
    fi.add(xb, progress=lambda done, total: progress(f"add {spec.float_factory}", done, total))
    if spec.float_params:
        fi.set_params(**dict(spec.float_params))
    fi.save(tmp / FLOAT_FILE)
    return FloatEntry(factory=fi.factory, ntotal=fi.ntotal, params=dict(fi.params))


def _hasher(
    spec: BuildSpec,
    xb: np.ndarray,
    *,
    hash_train: np.ndarray | None,
    learned: LinearHasher | None,
    progress: BuildProgress,
) -> LinearHasher:
    """The run's learned hash layer, or a ``sign`` / ``itq`` hasher fitted on ``hash_train``."""
    assert spec.binary is not None
    if spec.binary == "learned":
        if learned is None:
            raise UsageError("learned codes need the run's hash layer; train with model.hash_bits > 0")
        if learned.bits != spec.bits:
            raise UsageError(f"the run's hash layer has {learned.bits} bits, not {spec.bits}; pass --bits")
        return learned
    progress(f"fit {spec.binary} hash", 0, 1)
    hasher = fit_hasher(spec.binary, xb if hash_train is None else hash_train, spec.bits, seed=spec.seed)
    progress(f"fit {spec.binary} hash", 1, 1)
    return hasher


def _write_binary(
    tmp: Path, xb: np.ndarray, hasher: LinearHasher, spec: BuildSpec, progress: BuildProgress
) -> BinaryEntry:
    """Hash the items and fill the binary index; write ``binary.faiss`` and ``hasher.npz``."""
    assert spec.binary is not None
    step = 1 << 16  # encode a chunk at a time: the projection makes float copies of its input
    codes = np.concatenate([hasher.encode(xb[a : a + step]) for a in range(0, xb.shape[0], step)])
    bi = BinaryIndex(spec.bits, spec.binary_factory)
    bi.train(codes, seed=spec.seed)
    bi.add(codes)
    progress(f"add {spec.binary_factory}", xb.shape[0], xb.shape[0])
    bi.save(tmp / BINARY_FILE)
    hasher.save(tmp / HASHER_FILE)
    return BinaryEntry(method=spec.binary, bits=spec.bits, factory=spec.binary_factory)


def _metrics(flt: FloatEntry | None, binary: BinaryEntry | None, vectors: bool) -> tuple[str, ...]:
    hybrid = binary is not None and vectors
    return (("cosine",) if flt else ()) + (("hamming",) if binary else ()) + (("hybrid",) if hybrid else ())


def build_bundle(
    out: str | Path,
    embeddings: np.ndarray,
    *,
    modality: str,
    items: list[str],
    kind: str,
    run_info: RunInfo | dict[str, Any],
    spec: BuildSpec,
    labels: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    hash_train: np.ndarray | None = None,
    learned: LinearHasher | None = None,
    classes: list[str] | None = None,
    progress: BuildProgress | None = None,
    verify: bool = False,
) -> IndexBundle:
    """Build a bundle at ``out`` (atomically replacing a bundle already there, under its writer lock).

    Args:
        out: Bundle folder.
        embeddings: Raw common-space embeddings ``(n, d)`` of the items, row i = id i.
        modality: ``image`` or ``text``: what the items are.
        items: Per-row path, text or dataset id.
        kind: ``path``, ``text`` or ``id``.
        run_info: Manifest ``run`` entry; must hold ``checkpoint_sha256``.
        spec: Indexes to build.
        labels: Multi-hot labels ``(n, C)``, when known.
        source: Manifest description of where the items came from (data config, split).
        hash_train: Embeddings the ``sign``/``itq`` hasher is fitted on (default: ``embeddings``).
        learned: The run's hash layer, for ``spec.binary == "learned"``.
        classes: Class names, when known.
        progress: ``(stage, done, total)`` callback.
        verify: Check every written file's SHA-256 when loading the result.
    """
    progress = progress or _noop
    xb = _check_items(embeddings, modality=modality, items=items, labels=labels)
    run = _run_info(run_info)
    with writer_lock(Path(out)), staging_dir(Path(out)) as tmp:
        flt = _write_float(tmp, xb, spec, progress)
        binary = vectors = None
        if spec.binary is not None:
            hasher = _hasher(spec, xb, hash_train=hash_train, learned=learned, progress=progress)
            binary = _write_binary(tmp, xb, hasher, spec, progress)
        if spec.stores_vectors:
            write_vectors(tmp / VECTORS_FILE, None, l2_normalize(xb))
            vectors = True
        write_items(tmp / ITEMS_FILE, list(items), kind=kind, labels=labels, source=0)
        manifest = Manifest(
            run=run,
            modality=modality,
            dim=xb.shape[1],
            count=xb.shape[0],
            item_kind=kind,
            files={},
            created=now(),
            metrics=_metrics(flt, binary, bool(vectors)),
            float=flt,
            binary=binary,
            vectors_normalized=vectors,
            classes=tuple(classes) if classes is not None else None,
            sources=(Source.from_description(source, first_id=0, count=xb.shape[0]),),
        )
        finish_manifest(tmp, manifest)
    return load_bundle(out, verify=verify)


def _run_info(run_info: RunInfo | dict[str, Any]) -> RunInfo:
    if isinstance(run_info, RunInfo):
        return run_info
    if "checkpoint_sha256" not in run_info:
        raise IndexBundleError("run_info needs the checkpoint_sha256 of the model that encoded the items")
    return RunInfo.from_dict(run_info)


def add_to_bundle(
    path: str | Path,
    embeddings: np.ndarray,
    *,
    items: list[str],
    checkpoint_sha256: str,
    labels: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    progress: BuildProgress | None = None,
    verify: bool = False,
) -> IndexBundle:
    """Append items to an existing bundle without retraining its indexes or hasher (atomic, like a build).

    The bundle's writer lock is held from reading the old bundle to swapping in the new one, so concurrent adds
    run one after the other and each one's items are kept.

    Args:
        verify: Check every file's SHA-256 of the bundle before extending it.

    Raises:
        IndexBundleError: The bundle is missing, was built by another model, already holds this source, or its
            float index cannot take more vectors.
    """
    progress = progress or _noop
    path = Path(path)
    with writer_lock(path):
        old = load_bundle(path, checkpoint_sha256=checkpoint_sha256, verify=verify)
        try:
            xb = as_float_matrix(embeddings, d=old.dim, what="item embeddings")
            manifest = _extended_manifest(old, xb.shape[0], items=items, source=source)
            with staging_dir(path) as tmp:
                if old.manifest.shards is not None:  # a sharded bundle: the rows go to its smallest shard
                    manifest = _append_to_smallest_shard(
                        tmp, old, xb, items=items, labels=labels, manifest=manifest, progress=progress
                    )
                else:
                    _append_files(tmp, old, xb, items=items, labels=labels, progress=progress, manifest=manifest)
                finish_manifest(tmp, manifest)
        finally:
            old.close()
        return load_bundle(path)


def _extended_manifest(old: IndexBundle, n_new: int, *, items: list[str], source: dict[str, Any] | None) -> Manifest:
    """The manifest after appending ``n_new`` items; refuses a source the bundle already holds."""
    first = old.count
    if n_new == 0 or len(items) != n_new:
        raise UsageError(f"{n_new} embeddings but {len(items)} items; they must match row for row and be non-empty")
    m = old.manifest
    if source is not None and m.source_index(source) is not None:
        split = source.get("split", "?")
        raise IndexBundleError(f"{old.path} already holds these items (split {split}); nothing was added")
    added = Source.from_description(source, first_id=first, count=n_new)
    flt = replace(m.float, ntotal=first + n_new) if m.float is not None else None
    return replace(m, count=first + n_new, sources=(*m.sources, added), float=flt)


def _append_files(
    tmp: Path,
    old: IndexBundle,
    xb: np.ndarray,
    *,
    items: list[str],
    labels: np.ndarray | None,
    progress: BuildProgress,
    manifest: Manifest,
) -> None:
    """Write the old bundle's files plus ``xb`` into ``tmp``."""
    if old.float_index is not None:
        old.float_index.add(xb, progress=lambda done, total: progress("add float", done, total))
        old.float_index.save(tmp / FLOAT_FILE)
    if old.binary_index is not None and old.hasher is not None:
        old.binary_index.add(old.hasher.encode(xb))
        old.binary_index.save(tmp / BINARY_FILE)
        old.hasher.save(tmp / HASHER_FILE)
    progress("add", xb.shape[0], xb.shape[0])
    _append_items(tmp, old, xb, items=items, labels=labels, manifest=manifest)


def _append_items(
    tmp: Path, old: IndexBundle, xb: np.ndarray, *, items: list[str], labels: np.ndarray | None, manifest: Manifest
) -> None:
    """Write the old bundle's vectors and items table plus the new rows into ``tmp``."""
    if old.vectors is not None:
        write_vectors(tmp / VECTORS_FILE, old.vectors, l2_normalize(xb))
    shutil.copyfile((old.folder or old.path) / ITEMS_FILE, tmp / ITEMS_FILE)
    write_items(
        tmp / ITEMS_FILE,
        list(items),
        kind=manifest.item_kind,
        labels=labels,
        source=len(manifest.sources) - 1,
        first_id=old.count,
    )


def _append_to_smallest_shard(
    tmp: Path,
    old: IndexBundle,
    xb: np.ndarray,
    *,
    items: list[str],
    labels: np.ndarray | None,
    manifest: Manifest,
    progress: BuildProgress,
) -> Manifest:
    """Write a sharded bundle plus ``xb`` into ``tmp``: the new rows go to the shard holding the fewest items.

    Only that shard's index files are rewritten; the others are hard-linked from the old bundle (copied where the
    file system cannot link): a writer never changes a file in place, so the old bundle stays intact.

    Returns:
        ``manifest`` with the shard's new id run.
    """
    assert old.manifest.shards is not None
    folder = old.folder or old.path
    shards = list(old.manifest.shards)
    target = min(range(len(shards)), key=lambda i: (shards[i].count, i))
    info = shards[target]
    m = old.manifest
    if info.float is not None and m.float is not None:
        fi = FloatIndex.load(folder / info.float, factory=m.float.factory, d=m.dim, mmap=False)
        fi.add(xb, progress=lambda done, total: progress(f"add float shard {target}", done, total))
        fi.save(tmp / info.float)
    if info.binary is not None and m.binary is not None and old.hasher is not None:
        bi = BinaryIndex.load(folder / info.binary, factory=m.binary.factory, bits=m.binary.bits, mmap=False)
        bi.add(old.hasher.encode(xb))
        bi.save(tmp / info.binary)
    keep = set(m.files) - {ITEMS_FILE, VECTORS_FILE, *info.files()}
    for name in sorted(keep):
        _link_or_copy(folder / name, tmp / name)
    _append_items(tmp, old, xb, items=items, labels=labels, manifest=manifest)
    progress("add", xb.shape[0], xb.shape[0])
    first, (last_first, last_count) = old.count, info.ranges[-1]
    if last_first + last_count == first:  # the new ids continue the shard's last run
        ranges = (*info.ranges[:-1], (last_first, last_count + xb.shape[0]))
    else:
        ranges = (*info.ranges, (first, xb.shape[0]))
    shards[target] = replace(info, ranges=ranges)
    log.info("added %d items to shard %d of %s", xb.shape[0], target, old.path)
    return replace(manifest, shards=tuple(shards))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


__all__ = ["BuildSpec", "add_to_bundle", "build_bundle"]
