"""Run-level glue: encode a dataset split with a trained run, then build or extend a bundle from it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dscmr.config import DataConfig, load_config, to_dict
from dscmr.data import FeatureDataset, load_dataset
from dscmr.errors import DataError, UsageError
from dscmr.indexing.build import BuildProgress, BuildSpec, add_to_bundle, build_bundle
from dscmr.indexing.bundle import MODALITIES, IndexBundle
from dscmr.indexing.hashing import LinearHasher, learned_hasher
from dscmr.indexing.shards import build_sharded_bundle
from dscmr.train import LoadedRun, encode_split, load_run


def raw_formats() -> tuple[str, ...]:
    """Data formats whose items are raw files / sentences (the rest are precomputed benchmark features)."""
    try:
        from dscmr.encoders import RAW_FORMATS
    except ImportError:  # the raw encoders are optional
        return ()
    return tuple(RAW_FORMATS)


@dataclass(frozen=True)
class EncodedItems:
    """One modality of a split, encoded: raw embeddings, item strings, labels and how items are named."""

    embeddings: np.ndarray
    items: list[str]
    labels: np.ndarray
    kind: str
    classes: list[str] | None


def as_run(run: LoadedRun | str | Path) -> LoadedRun:
    return run if isinstance(run, LoadedRun) else load_run(run)


def resolve_data(run: LoadedRun, data: str | Path | None) -> DataConfig:
    """The data config to index: a TOML config's ``[data]``, the run's data config pointed at a path, or the run's
    own data config (``data`` None)."""
    if data is None or str(data) == "":
        return run.config.data
    p = Path(data)
    if p.suffix == ".toml":
        return load_config(p).data
    return replace(run.config.data, root=str(p))


def item_kind(data: DataConfig, modality: str) -> str:
    """``path`` (image files) / ``text`` (captions) for raw datasets, ``id`` for precomputed features."""
    if data.format in raw_formats():
        return "path" if modality == "image" else "text"
    return "id"


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise UsageError(f"--modality must be image or text, got {modality!r}")
    return modality


def encode_items(
    run: LoadedRun, data: DataConfig, *, modality: str, split: str = "test", dataset: FeatureDataset | None = None
) -> EncodedItems:
    """Encode one modality of a split with the run's model; duplicate items (e.g. one image with several
    captions) are kept once, with the union of their labels."""
    check_modality(modality)
    ds = dataset if dataset is not None else load_dataset(data)
    sp = ds.split(split)
    if len(sp) == 0:
        raise DataError(f"the {split} split is empty; choose another --split")
    u, v = encode_split(run.model, sp)
    emb = (u if modality == "image" else v).numpy()
    names = sp.img_items if modality == "image" else sp.txt_items
    items = list(names) if names is not None else [str(i) for i in range(len(sp))]
    first: dict[str, int] = {}
    keep: list[int] = []
    labels = sp.labels.copy()
    for row, name in enumerate(items):
        if name in first:
            labels[first[name]] = np.maximum(labels[first[name]], labels[row])
        else:
            first[name] = row
            keep.append(row)
    idx = np.asarray(keep, dtype=np.int64)
    classes = list(ds.class_names) if ds.class_names else None
    return EncodedItems(
        np.ascontiguousarray(emb[idx]), [items[i] for i in keep], labels[idx], item_kind(data, modality), classes
    )


def learned_layer(run: LoadedRun) -> LinearHasher:
    """The run's trained hash layer as a hasher (UsageError when the run has none); the model folds it
    (:meth:`dscmr.models.DSCMR.hash_projection`)."""
    if run.model.hash is None:
        raise UsageError(
            f"{run.run_dir} has no hash layer, so it has no learned codes; train with model.hash_bits > 0 "
            "(configs/wikipedia_hash.toml) or use --binary sign|itq"
        )
    W, b = run.model.hash_projection()  # (B, D), (B,)
    return learned_hasher(W.numpy(), b.numpy())


def run_info(run: LoadedRun) -> dict[str, Any]:
    """The manifest's ``run`` entry."""
    return {
        "path": str(run.run_dir),
        "checkpoint_sha256": run.checkpoint_sha256,
        "embed_dim": int(run.model.embed_dim),
        "hash_bits": int(run.model.hash_bits),
        "data_format": run.config.data.format,
    }


def _source(data: DataConfig, split: str) -> dict[str, Any]:
    return {"data": to_dict(data), "split": split}


@torch.no_grad()
def _hash_train(run: LoadedRun, ds: FeatureDataset) -> np.ndarray:
    """Embeddings the sign / itq hashers are fitted on: both modalities of the training split, so image and text
    codes share one centre and one rotation."""
    u, v = encode_split(run.model, ds.train)
    return torch.cat([u, v]).numpy()


def build_from_run(
    run: LoadedRun | str | Path,
    out: str | Path,
    *,
    modality: str,
    data: str | Path | None = None,
    split: str = "test",
    spec: BuildSpec | None = None,
    progress: BuildProgress | None = None,
    verify: bool = False,
    shards: int | None = None,
    ray: str | None = None,
) -> IndexBundle:
    """Encode one modality of a split with a run and write a bundle of it at ``out``.

    Args:
        run: A run folder or a loaded run.
        out: Bundle folder (an existing bundle there is replaced atomically).
        modality: ``image`` or ``text``: which side of the dataset becomes searchable.
        data: A TOML config, a data path (read with the run's data config), or None for the run's own data.
        split: Dataset split to index.
        spec: Indexes to build (default: exact float ``Flat``).
        progress: ``(stage, done, total)`` callback.
        verify: Check every written file's SHA-256 when loading the result.
        shards: Build a sharded bundle of this many shards (:mod:`dscmr.indexing.shards`); None: one index.
        ray: With ``shards``, fill the shards as Ray tasks (``local``, ``auto`` or a cluster address).
    """
    check_shard_options(shards, ray)
    run = as_run(run)
    spec = spec or BuildSpec()
    dcfg = resolve_data(run, data)
    ds = load_dataset(dcfg)
    enc = encode_items(run, dcfg, modality=modality, split=split, dataset=ds)
    learned = learned_layer(run) if spec.binary == "learned" else None
    hash_train = _hash_train(run, ds) if spec.binary in ("sign", "itq") else None
    options: dict[str, Any] = dict(
        modality=modality,
        items=enc.items,
        kind=enc.kind,
        labels=enc.labels,
        run_info=run_info(run),
        spec=spec,
        source=_source(dcfg, split),
        hash_train=hash_train,
        learned=learned,
        classes=enc.classes,
        progress=progress,
        verify=verify,
    )
    if shards is not None:
        return build_sharded_bundle(out, enc.embeddings, shards=shards, ray=ray, **options)
    return build_bundle(out, enc.embeddings, **options)


def check_shard_options(shards: int | None, ray: str | None) -> None:
    """``--shards`` at least 1 (its upper bound, the item count, is checked once the items are known); ``--ray``
    only with ``--shards``, and Ray reachable, before any encoding.

    Raises:
        UsageError: A bad combination or value.
    """
    if ray is not None and shards is None:
        raise UsageError("--ray fills the shards of a sharded build; pass --shards N too")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise UsageError(f"--shards must be a whole number from 1 to the number of items, got {shards!r}")
    if ray is not None:
        from dscmr.corpus.ray_runner import check_ray

        check_ray(ray)


def build_from_options(
    run: LoadedRun | str | Path,
    out: str | Path,
    *,
    modality: str,
    data: str | Path | None = None,
    split: str = "test",
    progress: BuildProgress | None = None,
    verify: bool = False,
    shards: int | None = None,
    ray: str | None = None,
    **options: Any,
) -> IndexBundle:
    """``dscmr index build``: a :class:`BuildSpec` from the command's options, then :func:`build_from_run`.

    Args:
        options: Keyword options of :meth:`BuildSpec.from_options` (``bits`` defaults to the run's hash width for
            learned codes, else 64).
    """
    check_modality(modality)
    run = as_run(run)
    spec = BuildSpec.from_options(**options, learned_bits=int(run.model.hash_bits))
    return build_from_run(
        run, out, modality=modality, data=data, split=split, spec=spec, progress=progress, verify=verify,
        shards=shards, ray=ray,
    )  # fmt: skip


def add_from_run(
    bundle: str | Path,
    run: LoadedRun | str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    progress: BuildProgress | None = None,
    verify: bool = False,
) -> IndexBundle:
    """Encode a split with the bundle's run and append it to the bundle (no retraining, atomic; ``verify``: check
    the bundle's file hashes first)."""
    from dscmr.indexing.bundle import peek_manifest

    run = as_run(run)
    manifest = peek_manifest(bundle)
    dcfg = resolve_data(run, data)
    enc = encode_items(run, dcfg, modality=manifest.modality, split=split)
    return add_to_bundle(
        bundle,
        enc.embeddings,
        items=enc.items,
        checkpoint_sha256=run.checkpoint_sha256,
        labels=enc.labels,
        source=_source(dcfg, split),
        progress=progress,
        verify=verify,
    )
