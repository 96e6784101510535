"""Features folders (``data.format = "features_dir"``): a corpus encoded once by ``dscmr encode``, read as a dataset.

Layout (version 1)::

    FEATURES_DIR/
      manifest.json            # FeaturesManifest: counts, encoders, data fingerprint, every file with its SHA-256
      images.jsonl             # one JSON string per line: the image file of image row i (an identifier only)
      texts.jsonl              # one JSON string per line: text row i
      records.jsonl            # one JSON object per image-text pair:
                               #   {"image": 3, "text": 7, "labels": [0, 2], "split": "train"}
      shards/image-00000.npy   # float32 (rows, d_img): image rows [k * shard_size, (k + 1) * shard_size)
      shards/text-00000.npy    # float32 (rows, d_txt): text rows, likewise

Every file is written atomically (a temporary file in the same folder, then a rename). The manifest is rewritten
after each finished shard, with ``complete = false`` until the last one; a shard entry without a ``sha256`` is not
finished, so a killed ``dscmr encode`` rerun with the same command recomputes only those.

Reading checks everything before trusting it: the manifest's version and completeness, that every file it names
lies inside the folder (no absolute paths, no ``..``, no link out), that each file's SHA-256 matches, that shards
are plain float32 ``.npy`` matrices of the stated shape (``allow_pickle=False``: nothing is ever unpickled), and the
records' indices and labels. Any problem is one :class:`~dscmr.errors.DataError` naming the file. The image paths
in ``images.jsonl`` are identifiers (search results show them); the reader never opens them.

Images that could not be decoded have NaN feature rows (listed per shard in the manifest); their records are
dropped with ``data.skip_bad = true`` and are an error otherwise, as for folder datasets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dscmr.config import DataConfig
from dscmr.data.feature_files import SPLITS, FeatureDataset, Split, _make_split, record_splits
from dscmr.errors import DataError
from dscmr.utils.io import atomic_write_json, atomic_write_text, atomic_write_with, file_sha256

log = logging.getLogger(__name__)

FEATURES_DIR_VERSION = 1
MANIFEST = "manifest.json"
ITEM_FILES = {"images": "images.jsonl", "texts": "texts.jsonl", "records": "records.jsonl"}
SHARD_DIR = "shards"
KINDS = ("image", "text")
_RERUN = "rerun `dscmr encode` with the same command to rebuild it"


@dataclass(frozen=True)
class ShardEntry:
    """One feature shard: rows ``[start, stop)`` of one modality.

    Attributes:
        kind: ``image`` or ``text``.
        index: Shard number within its kind.
        start: First row.
        stop: One past the last row.
        inputs_sha256: Fingerprint of the shard's inputs (image file contents or texts), in order.
        file: The shard file, relative to the folder (``shards/image-00000.npy``).
        sha256: SHA-256 of the written file; empty while the shard is not finished.
        nan_rows: Rows (absolute) whose image could not be decoded.
    """

    kind: str
    index: int
    start: int
    stop: int
    inputs_sha256: str
    file: str
    sha256: str = ""
    nan_rows: tuple[int, ...] = ()

    @property
    def done(self) -> bool:
        return bool(self.sha256)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "nan_rows": list(self.nan_rows)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardEntry:
        """Build an entry from its JSON form; ``ValueError``/``TypeError`` when a field has the wrong type."""
        e = cls(**{**d, "nan_rows": tuple(int(i) for i in d.get("nan_rows", ()))})
        ints_ok = all(type(v) is int for v in (e.index, e.start, e.stop)) and 0 <= e.start <= e.stop
        strs_ok = all(isinstance(v, str) for v in (e.inputs_sha256, e.file, e.sha256))
        if not (ints_ok and strs_ok and e.kind in KINDS):
            raise ValueError(f"malformed shard entry {d!r}")
        return e


@dataclass(frozen=True)
class FeaturesManifest:
    """What a features folder holds (``manifest.json``).

    Attributes:
        version: Layout version (:data:`FEATURES_DIR_VERSION`).
        complete: Whether every shard is written.
        source: The dataset the features were encoded from.
        n_records: Image-text pairs.
        n_images: Distinct images (image feature rows).
        n_texts: Distinct texts (text feature rows).
        image_dim: Image feature width.
        text_dim: Text feature width.
        shard_size: Rows per shard (the last one of each kind may be shorter).
        image_encoder: The image encoder's spec: backbone name, weights SHA-256, preprocessing.
        text_encoder: The text encoder's spec: model name, weights SHA-256, maximum length.
        data_fingerprint: SHA-256 over every shard's inputs and the records file.
        class_names: The label space (records hold indices into it).
        files: SHA-256 of each of ``images.jsonl``, ``texts.jsonl``, ``records.jsonl``.
        shards: Every shard, images first, in row order.
        created: When encoding finished (ISO time), empty while incomplete.
    """

    version: int
    complete: bool
    source: str
    n_records: int
    n_images: int
    n_texts: int
    image_dim: int
    text_dim: int
    shard_size: int
    image_encoder: dict[str, Any]
    text_encoder: dict[str, Any]
    data_fingerprint: str
    class_names: tuple[str, ...]
    files: dict[str, str]
    shards: tuple[ShardEntry, ...] = field(default=())
    created: str = ""

    @property
    def shards_done(self) -> int:
        return sum(s.done for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["shards"] = [s.to_dict() for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturesManifest:
        """Build a manifest from its JSON form; ``ValueError``/``TypeError``/``KeyError`` when malformed."""
        m = cls(
            **{
                **d,
                "class_names": tuple(str(c) for c in d["class_names"]),
                "shards": tuple(ShardEntry.from_dict(s) for s in d["shards"]),
            }
        )
        counts = (m.n_records, m.n_images, m.n_texts, m.image_dim, m.text_dim, m.shard_size)
        if not all(type(v) is int and v >= 0 for v in counts) or not isinstance(m.files, dict):
            raise ValueError("malformed counts or files")
        return m


class FeaturesDir:
    """The one owner of the features-folder layout (see the module docstring).

    Args:
        root: The folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @staticmethod
    def shard_file(kind: str, index: int) -> str:
        """Relative name of a shard file."""
        return f"{SHARD_DIR}/{kind}-{index:05d}.npy"

    def path(self, rel: str) -> Path:
        """``root / rel``, refusing anything that leaves the folder (absolute, ``..``, a link out).

        Raises:
            DataError: The path escapes the folder.
        """
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel or ":" in rel:
            raise DataError(f"{self.manifest_path}: file {rel!r} is not a plain path inside the folder; {_RERUN}")
        path = self.root / rel
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise DataError(f"{self.manifest_path}: {rel!r} links out of the folder; {_RERUN}")
        return path

    # -- writing (dscmr.corpus) ----------------------------------------------------------------------------------

    def write_manifest(self, manifest: FeaturesManifest) -> None:
        atomic_write_json(self.manifest_path, manifest.to_dict())

    def write_jsonl(self, name: str, rows: list[Any]) -> str:
        """Atomically write one of :data:`ITEM_FILES` and return its SHA-256."""
        atomic_write_text(self.root / ITEM_FILES[name], "".join(json.dumps(r) + "\n" for r in rows))
        return file_sha256(self.root / ITEM_FILES[name])

    def write_shard(self, entry: ShardEntry, features: np.ndarray) -> ShardEntry:
        """Atomically write a shard's features; returns the entry with its ``sha256`` (and NaN rows) filled in."""
        arr = np.ascontiguousarray(features, dtype=np.float32)  # (rows, d)
        if arr.ndim != 2 or arr.shape[0] != entry.rows:
            raise ValueError(f"shard {entry.file}: expected {entry.rows} rows, got shape {arr.shape}")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)

        path = self.path(entry.file)
        atomic_write_with(path, write)
        nan_rows = tuple(int(entry.start + i) for i in np.flatnonzero(~np.isfinite(arr).all(axis=1)))
        return dataclasses.replace(entry, sha256=file_sha256(path), nan_rows=nan_rows)

    def remove_unlisted_shards(self, manifest: FeaturesManifest) -> list[str]:
        """Delete the shard files the manifest does not list (left by an earlier plan) and the temporary files of
        writes a kill interrupted (of shards, the manifest and the item lists); returns their names."""
        listed = {s.file for s in manifest.shards}
        found = sorted((self.root / SHARD_DIR).glob("*.npy")) + sorted((self.root / SHARD_DIR).glob(".*.tmp"))
        stale = [p for p in found if f"{SHARD_DIR}/{p.name}" not in listed]
        for path in stale:
            self.path(f"{SHARD_DIR}/{path.name}").unlink()
        own = (MANIFEST, *ITEM_FILES.values())  # atomic_write_with names its temporary file .<name>.<random>.tmp
        temps = sorted(
            p for name in own for p in self.root.glob(f".{name}.*.tmp") if p.is_file() and not p.is_symlink()
        )
        for path in temps:
            path.unlink()
        return [p.name for p in stale + temps]

    def shard_intact(self, entry: ShardEntry) -> bool:
        """Whether a finished entry's file is present with the recorded SHA-256."""
        path = self.path(entry.file)
        return entry.done and path.is_file() and file_sha256(path) == entry.sha256

    # -- reading -------------------------------------------------------------------------------------------------

    def read_manifest(self) -> FeaturesManifest | None:
        """The manifest, or None when the folder has none.

        Raises:
            DataError: The manifest is unreadable, of another version or malformed.
        """
        path = self.manifest_path
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or raw.get("version") != FEATURES_DIR_VERSION:
                version = raw.get("version") if isinstance(raw, dict) else None
                raise DataError(
                    f"{path}: features-folder version {version!r} is not {FEATURES_DIR_VERSION}; "
                    "re-encode the corpus with this version of dscmr"
                )
            return FeaturesManifest.from_dict(raw)
        except DataError:
            raise
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{path} is not a valid features manifest ({type(exc).__name__}); {_RERUN}") from None

    def verified(self, rel: str, sha256: str) -> Path:
        """The path of ``rel`` after checking it is inside the folder, present and has the recorded SHA-256."""
        path = self.path(rel)
        if not path.is_file():
            raise DataError(f"{self.root}: {rel} is missing; {_RERUN}")
        if file_sha256(path) != sha256:
            raise DataError(f"{self.root}: {rel} does not match its SHA-256 in manifest.json (changed or truncated)")
        return path

    def read_jsonl(self, name: str, sha256: str) -> list[Any]:
        path = self.verified(ITEM_FILES[name], sha256)
        try:
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        except (UnicodeDecodeError, ValueError):
            raise DataError(f"{path} is not JSON Lines; {_RERUN}") from None

    def read_features(self, manifest: FeaturesManifest, kind: str) -> np.ndarray:
        """All shards of ``kind`` verified and stacked: ``(n, d)`` float32."""
        n, dim = (manifest.n_images, manifest.image_dim) if kind == "image" else (manifest.n_texts, manifest.text_dim)
        out = np.empty((n, dim), dtype=np.float32)  # (n, d)
        covered = 0
        for entry in (s for s in manifest.shards if s.kind == kind):
            path = self.verified(entry.file, entry.sha256)
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{path} is not a float32 .npy matrix ({exc}); {_RERUN}") from None
            if arr.dtype != np.float32 or arr.shape != (entry.rows, dim) or entry.start != covered:
                raise DataError(f"{path}: shape {arr.shape} {arr.dtype}, expected ({entry.rows}, {dim}) float32")
            out[entry.start : entry.stop] = arr
            covered = entry.stop
        if covered != n:
            raise DataError(f"{self.manifest_path}: {kind} shards cover {covered} of {n} rows; {_RERUN}")
        return out


def _records(raw: list[Any], manifest: FeaturesManifest, source: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image rows, text rows, split names)`` of the records, checked against the manifest."""
    if len(raw) != manifest.n_records:
        raise DataError(f"{source}: {len(raw)} records, manifest says {manifest.n_records}")
    try:
        img = np.array([r["image"] for r in raw], dtype=np.int64)
        txt = np.array([r["text"] for r in raw], dtype=np.int64)
        split = np.array([r["split"] for r in raw], dtype=str)
    except (TypeError, KeyError, ValueError):
        raise DataError(f"{source}: a record lacks an integer image/text row or a split") from None
    if img.size and (img.min() < 0 or img.max() >= manifest.n_images or txt.min() < 0 or txt.max() >= manifest.n_texts):
        raise DataError(f"{source}: a record points past the feature rows")
    if not set(split.tolist()) <= set(SPLITS):
        raise DataError(f"{source}: unknown split value(s) {sorted(set(split.tolist()) - set(SPLITS))}")
    return img, txt, split


def _labels(raw: list[Any], num_classes: int, source: Path) -> np.ndarray:
    labels = np.zeros((len(raw), num_classes), dtype=np.float32)  # (n_records, C)
    for i, r in enumerate(raw):
        ids = r.get("labels") if isinstance(r, dict) else None
        if not isinstance(ids, list) or not ids or not all(type(c) is int and 0 <= c < num_classes for c in ids):
            raise DataError(f"{source}: record {i} has labels {ids!r}, expected class ids 0..{num_classes - 1}")
        labels[i, ids] = 1.0
    return labels


def _drop_undecodable(manifest: FeaturesManifest, img_rows: np.ndarray, cfg: DataConfig, source: Path) -> np.ndarray:
    """Indices of the records to keep: all, or those whose image decoded (``skip_bad``); else a DataError."""
    nan_rows = {r for s in manifest.shards if s.kind == "image" for r in s.nan_rows}
    if not nan_rows:
        return np.arange(img_rows.shape[0])
    bad = np.isin(img_rows, sorted(nan_rows))
    if not cfg.skip_bad:
        raise DataError(
            f"{source}: {int(bad.sum())} record(s) have an image that could not be decoded ({len(nan_rows)} "
            "image(s)); fix them and rerun `dscmr encode`, or set data.skip_bad=true to drop them"
        )
    log.warning("%s: skipped %d record(s) with undecodable images (data.skip_bad=true)", source, int(bad.sum()))
    return np.flatnonzero(~bad)


def load_features_dir(root: Path, cfg: DataConfig) -> FeatureDataset:
    """``data.format = "features_dir"``: a folder written by ``dscmr encode`` as train/val/test splits.

    Raises:
        DataError: No or an unfinished, malformed or tampered folder (see the module docstring).
    """
    folder = FeaturesDir(root)
    if not folder.root.is_dir():
        raise DataError(f"features folder not found: {folder.root}; pass --data-root or write it with dscmr encode")
    manifest = folder.read_manifest()
    if manifest is None:
        raise DataError(f"{folder.root} has no {MANIFEST}; it is not a features folder written by dscmr encode")
    if not manifest.complete:
        raise DataError(
            f"{folder.root}: encoding is unfinished ({manifest.shards_done} of {len(manifest.shards)} shards); "
            "rerun the same `dscmr encode` command to finish it"
        )
    source = folder.root / ITEM_FILES["records"]
    try:
        raw = folder.read_jsonl("records", manifest.files["records"])
        images = folder.read_jsonl("images", manifest.files["images"])
        texts = folder.read_jsonl("texts", manifest.files["texts"])
    except KeyError:
        raise DataError(f"{folder.manifest_path} lacks a file hash; {_RERUN}") from None
    if cfg.num_classes and cfg.num_classes != len(manifest.class_names):
        raise DataError(
            f"{source}: the records name {len(manifest.class_names)} classes but data.num_classes is "
            f"{cfg.num_classes}; set data.num_classes = 0"
        )
    img_rows, txt_rows, split = _records(raw, manifest, source)
    labels = _labels(raw, len(manifest.class_names), source)
    keep = _drop_undecodable(manifest, img_rows, cfg, source)
    img_feats = folder.read_features(manifest, "image")
    txt_feats = folder.read_features(manifest, "text")
    parts: dict[str, Split] = {}
    for name in SPLITS:
        rows = keep[split[keep] == name]
        parts[name] = _make_split(
            img_feats[img_rows[rows]],
            txt_feats[txt_rows[rows]],
            labels[rows],
            source=f"{folder.root} [split={name}]",
            cfg=cfg,
            num_classes=len(manifest.class_names),
            one_based=False,
            img_items=tuple(str(images[i]) for i in img_rows[rows]),
            txt_items=tuple(str(texts[i]) for i in txt_rows[rows]),
        )
    train, val, test = record_splits(parts, cfg, source=str(source))
    return FeatureDataset(train, val, test, len(manifest.class_names), manifest.class_names, str(root))
