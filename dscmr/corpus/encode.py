"""Encode a raw corpus (a folder or built-in dataset) once into a features folder, in-process or on Ray.

``encode_corpus`` reads and checks the dataset's records (as the folder loader does), cuts the distinct images and
texts into shards (:mod:`dscmr.corpus.shards`), keeps the shards a previous run of the same command already
finished, and encodes the rest: in this process, or on a Ray cluster whose actors each hold the encoders
(:mod:`dscmr.corpus.ray_runner`). It writes the folder that ``data.format = "features_dir"`` reads
(:mod:`dscmr.data.features_dir`), updating the manifest after every shard, so a killed job rerun with the same
command recomputes only the unfinished shards. One process writes a folder at a time: an encode holds the folder's
writer lock (``.NAME.lock`` beside it, :mod:`dscmr.utils.locks`) throughout, and a second one into the same folder
stops at once with one line instead of racing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dscmr.config import DataConfig
from dscmr.corpus.shards import ShardEncoder, ShardTask, plan_shards, reusable_shards, reuse
from dscmr.data.features_dir import FEATURES_DIR_VERSION, FeaturesDir, FeaturesManifest, ShardEntry
from dscmr.errors import DataError, UsageError
from dscmr.utils.locks import try_exclusive
from dscmr.utils.progress import Progress, counter

log = logging.getLogger(__name__)

ENCODABLE_FORMATS = ("folder", "digits", "shapes")
DEFAULT_SHARD_SIZE = 1024


@dataclass(frozen=True)
class Corpus:
    """A raw dataset's records reduced to what is encoded.

    Attributes:
        source: The dataset folder.
        images: Distinct image files (absolute paths), in first-seen order.
        texts: Distinct texts, in first-seen order.
        records: One ``{"image": row, "text": row, "labels": [class ids], "split": name}`` per pair.
        class_names: Sorted class names.
    """

    source: Path
    images: tuple[str, ...]
    texts: tuple[str, ...]
    records: tuple[dict[str, Any], ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class EncodeResult:
    """What an encoding run did and how fast (``dscmr encode --json`` prints :meth:`to_dict`).

    Attributes:
        out: The features folder.
        mode: ``in-process`` or ``ray``.
        workers: Parallel encoders (1 in-process).
        threads: torch threads per worker.
        records: Image-text pairs.
        images: Distinct images.
        texts: Distinct texts.
        shards: Shards in the folder.
        computed: Shards encoded by this run.
        reused: Finished shards kept from a previous run.
        images_encoded: Images encoded by this run.
        texts_encoded: Texts encoded by this run.
        nan_images: Images that could not be decoded (NaN rows).
        encode_seconds: Wall time of the shard encoding (worker start-up included).
        total_seconds: Wall time of the whole run (reading, fingerprinting, model loading included).
    """

    out: str
    mode: str
    workers: int
    threads: int
    records: int
    images: int
    texts: int
    shards: int
    computed: int
    reused: int
    images_encoded: int
    texts_encoded: int
    nan_images: int
    encode_seconds: float
    total_seconds: float

    @property
    def items_per_second(self) -> float:
        """Images plus texts encoded per second of the encoding phase."""
        done = self.images_encoded + self.texts_encoded
        return done / self.encode_seconds if self.encode_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "items_per_second": round(self.items_per_second, 2)}


def corpus_folder(cfg: DataConfig, data_root: str | Path | None) -> Path:
    """The raw dataset folder a data config names (a folder dataset, or a generated built-in one).

    Raises:
        UsageError: ``data.format`` is not a raw format.
    """
    from dscmr.data import resolve_data_root
    from dscmr.data.builtin import builtin_folder

    if cfg.format == "folder":
        return resolve_data_root(cfg, data_root)
    if cfg.format in ("digits", "shapes"):
        return builtin_folder(cfg.format, cfg.cache_dir)
    raise UsageError(
        f"dscmr encode reads raw datasets (data.format = {', '.join(ENCODABLE_FORMATS)}), not {cfg.format!r}"
    )


def read_corpus(cfg: DataConfig, data_root: str | Path | None = None) -> Corpus:
    """Read and check a raw dataset's records, with the folder loader's rules (``data.skip_bad``, splits).

    Raises:
        DataError: Bad records without ``skip_bad``, a path escaping the folder, or no usable record.
    """
    from dscmr.data.folder import hash_split, problems_message, read_records

    root = corpus_folder(cfg, data_root).expanduser()
    captions, records, problems, escapes = read_records(root)
    if escapes:
        raise DataError(problems_message(captions, escapes, hint="Use paths relative to the dataset folder"))
    if problems and not cfg.skip_bad:
        raise DataError(problems_message(captions, problems, hint="Fix them, or set data.skip_bad=true to drop them"))
    if problems:
        log.warning("%s: skipped %d bad record(s) (data.skip_bad=true)", captions, len(problems))
    if not records:
        raise DataError(f"{captions}: no usable records; see docs/end_to_end.md for the format")
    images = list(dict.fromkeys(str(r.path.resolve()) for r in records))
    texts = list(dict.fromkeys(r.text for r in records))
    img_row = {p: i for i, p in enumerate(images)}
    txt_row = {t: i for i, t in enumerate(texts)}
    class_names = tuple(sorted({name for r in records for name in r.labels}))
    class_id = {name: i for i, name in enumerate(class_names)}
    rows = tuple(
        {
            "image": img_row[str(r.path.resolve())],
            "text": txt_row[r.text],
            "labels": sorted(class_id[n] for n in r.labels),
            "split": r.split or hash_split(r.image),
        }
        for r in records
    )
    return Corpus(root, tuple(images), tuple(texts), rows, class_names)


def _check_out(folder: FeaturesDir) -> FeaturesManifest | None:
    """The previous manifest of ``--out`` (None for a new or empty folder); refuses a folder of something else."""
    if folder.root.exists() and not folder.root.is_dir():
        raise UsageError(f"--out {folder.root} is a file; pass a folder")
    try:
        previous = folder.read_manifest()
    except DataError as exc:
        raise UsageError(f"--out {folder.root} cannot be resumed ({exc}); pass a new --out or delete it") from None
    if previous is None and folder.root.is_dir() and any(folder.root.iterdir()):
        raise UsageError(f"--out {folder.root} is not empty and holds no features manifest; pass a new folder")
    return previous


def _fingerprint(tasks: Sequence[ShardTask], records_sha: str) -> str:
    h = hashlib.sha256()
    for t in tasks:
        h.update(f"{t.entry.kind}:{t.entry.index}:{t.entry.inputs_sha256};".encode())
    h.update(records_sha.encode())
    return h.hexdigest()


class _Journal:
    """The manifest being written: one entry per shard, rewritten atomically after each finished shard."""

    def __init__(self, folder: FeaturesDir, manifest: FeaturesManifest, on_shard: Callable | None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.entries = {(s.kind, s.index): s for s in manifest.shards}
        self.on_shard = on_shard

    def done(self, entry: ShardEntry) -> None:
        self.entries[(entry.kind, entry.index)] = entry
        self.manifest = dataclasses.replace(self.manifest, shards=tuple(self.entries.values()))
        self.folder.write_manifest(self.manifest)
        if self.on_shard is not None:
            self.on_shard(entry)

    def finish(self) -> FeaturesManifest:
        created = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.manifest = dataclasses.replace(self.manifest, complete=True, created=created)
        self.folder.write_manifest(self.manifest)
        self.folder.remove_unlisted_shards(self.manifest)  # shards of an earlier plan (another shard size, ...)
        return self.manifest


def _start_manifest(
    folder: FeaturesDir,
    previous: FeaturesManifest | None,
    corpus: Corpus,
    tasks: list[ShardTask],
    encoder: ShardEncoder,
    *,
    shard_size: int,
) -> tuple[FeaturesManifest, list[ShardTask]]:
    """Write the item files and the unfinished manifest; returns it and the tasks still to run."""
    image_spec, text_spec = encoder.image_encoder.cache_spec(), encoder.text_encoder.cache_spec()
    kept = reusable_shards(previous, folder, image_spec=image_spec, text_spec=text_spec, shard_size=shard_size)
    entries = [reuse(t, kept) or t.entry for t in tasks]
    pending = [t for t, e in zip(tasks, entries, strict=True) if not e.done]
    files = {
        "images": folder.write_jsonl("images", list(corpus.images)),
        "texts": folder.write_jsonl("texts", list(corpus.texts)),
        "records": folder.write_jsonl("records", list(corpus.records)),
    }
    manifest = FeaturesManifest(
        version=FEATURES_DIR_VERSION,
        complete=False,
        source=str(corpus.source),
        n_records=len(corpus.records),
        n_images=len(corpus.images),
        n_texts=len(corpus.texts),
        image_dim=int(encoder.image_encoder.num_features),
        text_dim=int(encoder.text_encoder.dim),
        shard_size=shard_size,
        image_encoder=image_spec,
        text_encoder=text_spec,
        data_fingerprint=_fingerprint(tasks, files["records"]),
        class_names=corpus.class_names,
        files=files,
        shards=tuple(entries),
    )
    folder.write_manifest(manifest)
    return manifest, pending


def encode_corpus(
    cfg: DataConfig,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    ray: str | None = None,
    workers: int = 0,
    threads: int = 0,
    batch_size: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    encoder: ShardEncoder | None = None,
    on_shard: Callable[[ShardEntry], None] | None = None,
    progress: Progress | bool | None = None,
) -> EncodeResult:
    """Encode a folder or built-in dataset into the features folder ``out``.

    Args:
        cfg: Data config: the dataset (``format``, ``root``, ``skip_bad``) and the encoders (``image_backbone``,
            ``image_size``, ``image_backbone_weights``, ``text_model``).
        out: The features folder (created; a rerun keeps the shards that are already finished).
        data_root: Dataset folder, overriding ``cfg.root``.
        ray: None to encode in this process; ``local`` (a local cluster, or the one already initialised), ``auto``
            (the running cluster) or a cluster address to encode in Ray actors.
        workers: Ray actors (default: the cluster's CPUs divided by ``threads``).
        threads: torch threads per worker (default: in-process, torch's setting; on Ray, CPUs / workers).
        batch_size: Inputs per encoder call (default 32 images, 64 texts).
        shard_size: Rows per shard.
        encoder: The in-process encoder to use (tests); default: the one ``cfg`` describes.
        on_shard: Called with each finished shard's entry, after the manifest records it.
        progress: Hears ``(shards done, shards, "encode shards")`` reports (:mod:`dscmr.utils.progress`).

    Raises:
        UsageError: A non-raw data format, bad option values, ``--out`` holding something else or being written by
            another process at the same time (its writer lock, ``.NAME.lock`` beside it), no Ray.
        DataError: Bad records (see :func:`read_corpus`).
    """
    if shard_size <= 0 or batch_size < 0 or workers < 0 or threads < 0:
        raise UsageError("--shard-size must be positive; --batch-size, --workers and --threads must be >= 0")
    if ray is not None:
        from dscmr.corpus.ray_runner import check_ray

        check_ray(ray)
    t0 = time.perf_counter()
    folder = FeaturesDir(out)
    with _writer(folder):
        return _encode(
            cfg, folder, t0, data_root=data_root, ray=ray, workers=workers, threads=threads, batch_size=batch_size,
            shard_size=shard_size, encoder=encoder, on_shard=on_shard, progress=progress,
        )  # fmt: skip


@contextlib.contextmanager
def _writer(folder: FeaturesDir) -> Iterator[None]:
    """Hold ``--out``'s writer lock (``.NAME.lock`` beside it) for the whole encode, or refuse at once.

    Raises:
        UsageError: Another process is encoding into the same folder, or the lock file cannot be created.
    """
    with contextlib.ExitStack() as stack:
        try:
            mine = stack.enter_context(try_exclusive(folder.root))
        except OSError as exc:
            raise UsageError(
                f"cannot lock --out {folder.root} ({exc.strerror}); check the folder's permissions"
            ) from None
        if not mine:
            raise UsageError(
                f"--out {folder.root} is being written by another dscmr encode; wait for it to finish "
                "(a rerun then reuses its shards) or pass another --out"
            )
        yield


def _encode(
    cfg: DataConfig,
    folder: FeaturesDir,
    t0: float,
    *,
    data_root: str | Path | None,
    ray: str | None,
    workers: int,
    threads: int,
    batch_size: int,
    shard_size: int,
    encoder: ShardEncoder | None,
    on_shard: Callable[[ShardEntry], None] | None,
    progress: Progress | bool | None,
) -> EncodeResult:
    """:func:`encode_corpus` once its options are checked and ``--out``'s writer lock is held."""
    previous = _check_out(folder)
    corpus = read_corpus(cfg, data_root)
    if encoder is None:
        encoder = ShardEncoder.from_config(folder.root, cfg, batch_size=batch_size)
    tasks = plan_shards("image", corpus.images, shard_size=shard_size)
    tasks += plan_shards("text", corpus.texts, shard_size=shard_size)
    manifest, pending = _start_manifest(folder, previous, corpus, tasks, encoder, shard_size=shard_size)
    advance = counter(progress, len(tasks), "encode shards")
    advance(len(tasks) - len(pending))
    journal = _Journal(folder, manifest, on_shard)

    def done(entry: ShardEntry) -> None:
        journal.done(entry)
        advance(1)

    t1 = time.perf_counter()
    if ray is None:
        workers, threads = _run_in_process(pending, encoder, threads=threads, on_done=done)
        mode = "in-process"
    else:
        from dscmr.corpus.ray_runner import run_on_ray

        workers, threads = run_on_ray(
            pending,
            cfg,
            folder.root,
            address=ray,
            workers=workers,
            threads=threads,
            batch_size=batch_size,
            on_done=done,
        )
        mode = "ray"
    t2 = time.perf_counter()
    final = journal.finish()
    return EncodeResult(
        out=str(folder.root),
        mode=mode,
        workers=workers,
        threads=threads,
        records=final.n_records,
        images=final.n_images,
        texts=final.n_texts,
        shards=len(final.shards),
        computed=len(pending),
        reused=len(tasks) - len(pending),
        images_encoded=sum(t.entry.rows for t in pending if t.entry.kind == "image"),
        texts_encoded=sum(t.entry.rows for t in pending if t.entry.kind == "text"),
        nan_images=sum(len(s.nan_rows) for s in final.shards),
        encode_seconds=round(t2 - t1, 3),
        total_seconds=round(time.perf_counter() - t0, 3),
    )


def _run_in_process(
    tasks: list[ShardTask], encoder: ShardEncoder, *, threads: int, on_done: Callable[[ShardEntry], None]
) -> tuple[int, int]:
    """Encode the tasks one after the other in this process; returns ``(workers, threads)`` = ``(1, threads)``."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for task in tasks:
            on_done(encoder(task))
        return 1, torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
