"""Build and extend index bundles, from arrays or from a trained run and a dataset split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import IndexBundleError, QueryError
from dscmr.indexing.arrays import as_float_matrix, check_bits, l2_normalize
from dscmr.indexing.binary_index import DEFAULT_BINARY_FACTORY, BinaryIndex
from dscmr.indexing.bundle import (
    BINARY_FILE,
    FLOAT_FILE,
    FORMAT,
    FORMAT_VERSION,
    HASHER_FILE,
    ITEMS_FILE,
    MODALITIES,
    VECTORS_FILE,
    IndexBundle,
    _now,
    finish_manifest,
    load_bundle,
    staging_dir,
    write_items,
    write_vectors,
)
from dscmr.indexing.float_index import DEFAULT_FACTORY, FloatIndex
from dscmr.indexing.hashing import HASH_METHODS, LinearHasher, fit_hasher

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
        keep_vectors: With a binary index, also store the float vectors for hybrid re-ranking (4 d bytes per item,
            memory-mapped); without them a binary-only bundle costs B / 8 bytes per item plus the items table.
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
            raise QueryError("a bundle needs a float index (--float FACTORY) or a binary one (--binary METHOD)")
        if self.binary is not None:
            if self.binary not in HASH_METHODS:
                raise QueryError(f"unknown hash method {self.binary!r}; use one of {', '.join(HASH_METHODS)}")
            check_bits(self.bits)


def _noop(stage: str, done: int, total: int) -> None:
    return None


def build_bundle(
    out: str | Path,
    embeddings: np.ndarray,
    *,
    modality: str,
    items: list[str],
    kind: str,
    run_info: dict[str, Any],
    spec: BuildSpec,
    labels: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    hash_train: np.ndarray | None = None,
    learned: LinearHasher | None = None,
    classes: list[str] | None = None,
    progress: BuildProgress | None = None,
) -> IndexBundle:
    """Build a bundle at ``out`` (atomically replacing a bundle already there).

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
    """
    progress = progress or _noop
    if modality not in MODALITIES:
        raise QueryError(f"modality must be image or text, got {modality!r}")
    if "checkpoint_sha256" not in run_info:
        raise IndexBundleError("run_info needs the checkpoint_sha256 of the model that encoded the items")
    xb = as_float_matrix(embeddings, what="item embeddings")
    n, d = xb.shape
    if n == 0:
        raise QueryError("nothing to index: the split has no items")
    if len(items) != n or (labels is not None and labels.shape[0] != n):
        raise QueryError(f"{n} embeddings but {len(items)} items / labels; they must match row for row")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _now(),
        "run": run_info,
        "modality": modality,
        "dim": d,
        "count": n,
        "metrics": [],
        "float": None,
        "binary": None,
        "vectors": None,
        "items": {"file": ITEMS_FILE, "kind": kind},
        "classes": classes,
        "sources": [{**(source or {}), "first_id": 0, "count": n}],
    }
    with staging_dir(Path(out)) as tmp:
        if spec.float_factory is not None:
            fi = FloatIndex(d, spec.float_factory)
            if not fi.is_trained:
                progress(f"train {spec.float_factory}", 0, 1)
                used = fi.train(xb, seed=spec.seed)
                progress(f"train {spec.float_factory} ({used} vectors)", 1, 1)
            fi.add(xb, progress=lambda done, total: progress(f"add {spec.float_factory}", done, total))
            if spec.float_params:
                fi.set_params(**dict(spec.float_params))
            fi.save(tmp / FLOAT_FILE)
            manifest["float"] = {"file": FLOAT_FILE, **fi.describe()}
            manifest["metrics"].append("cosine")
        if spec.binary is not None:
            if spec.binary == "learned":
                if learned is None:
                    raise QueryError("learned codes need the run's hash layer; train with model.hash_bits > 0")
                hasher = learned
                if hasher.bits != spec.bits:
                    raise QueryError(f"the run's hash layer has {hasher.bits} bits, not {spec.bits}; pass --bits")
            else:
                progress(f"fit {spec.binary} hash", 0, 1)
                hasher = fit_hasher(spec.binary, xb if hash_train is None else hash_train, spec.bits, seed=spec.seed)
                progress(f"fit {spec.binary} hash", 1, 1)
            codes = hasher.encode(xb)
            bi = BinaryIndex(spec.bits, spec.binary_factory)
            bi.train(codes, seed=spec.seed)
            bi.add(codes)
            progress(f"add {spec.binary_factory}", n, n)
            bi.save(tmp / BINARY_FILE)
            hasher.save(tmp / HASHER_FILE)
            manifest["binary"] = {
                "method": spec.binary,
                "bits": spec.bits,
                "factory": spec.binary_factory,
                "metric": "hamming",
                "file": BINARY_FILE,
                "hasher": HASHER_FILE,
            }
            manifest["metrics"].append("hamming")
            if spec.keep_vectors:
                write_vectors(tmp / VECTORS_FILE, None, l2_normalize(xb))
                manifest["vectors"] = {"file": VECTORS_FILE, "normalized": True}
                manifest["metrics"].append("hybrid")
        write_items(tmp / ITEMS_FILE, list(items), kind=kind, labels=labels, source=0)
        finish_manifest(tmp, manifest)
    return load_bundle(out)


def add_to_bundle(
    path: str | Path,
    embeddings: np.ndarray,
    *,
    items: list[str],
    checkpoint_sha256: str,
    labels: np.ndarray | None = None,
    source: dict[str, Any] | None = None,
    progress: BuildProgress | None = None,
) -> IndexBundle:
    """Append items to an existing bundle without retraining its indexes or hasher (atomic, like a build).

    Raises:
        IndexBundleError: The bundle is missing, was built by another model, already holds this source, or its
            float index cannot take more vectors.
    """
    progress = progress or _noop
    path = Path(path)
    old = load_bundle(path, checkpoint_sha256=checkpoint_sha256)
    xb = as_float_matrix(embeddings, d=old.dim, what="item embeddings")
    n_new, first = xb.shape[0], old.count
    if n_new == 0 or len(items) != n_new:
        raise QueryError(f"{n_new} embeddings but {len(items)} items; they must match row for row and be non-empty")
    manifest = dict(old.manifest)
    sources = list(manifest.get("sources", []))
    if source is not None:
        key = {k: v for k, v in source.items() if k not in ("first_id", "count")}
        for s in sources:
            if {k: v for k, v in s.items() if k not in ("first_id", "count")} == key:
                split = key.get("split", "?")
                raise IndexBundleError(f"{path} already holds these items (split {split}); nothing was added")
    sources.append({**(source or {}), "first_id": first, "count": n_new})
    with staging_dir(path) as tmp:
        if old.float_index is not None:
            old.float_index.add(xb, progress=lambda done, total: progress("add float", done, total))
            old.float_index.save(tmp / FLOAT_FILE)
        if old.binary_index is not None and old.hasher is not None:
            old.binary_index.add(old.hasher.encode(xb))
            old.binary_index.save(tmp / BINARY_FILE)
            old.hasher.save(tmp / HASHER_FILE)
        if old.vectors is not None:
            write_vectors(tmp / VECTORS_FILE, old.vectors, l2_normalize(xb))
        progress("add", n_new, n_new)
        import shutil

        shutil.copyfile(path / ITEMS_FILE, tmp / ITEMS_FILE)
        write_items(
            tmp / ITEMS_FILE,
            list(items),
            kind=manifest["items"]["kind"],
            labels=labels,
            source=len(sources) - 1,
            first_id=first,
        )
        manifest.update(count=first + n_new, sources=sources)
        old.close()
        finish_manifest(tmp, manifest)
    return load_bundle(path)


__all__ = ["BuildSpec", "add_to_bundle", "build_bundle"]
