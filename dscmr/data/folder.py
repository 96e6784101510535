"""Folder datasets ("bring your own data"): an ``images/`` folder and a ``captions.jsonl`` (or ``.csv``) file.

Layout::

    my_data/
      images/cat1.jpg, images/dog7.png, ...
      captions.jsonl          # or captions.csv

One record per image-text pair; an image may appear in several records (several captions)::

    {"image": "images/cat1.jpg", "text": "a cat asleep on a sofa", "labels": ["cat"], "split": "train"}
    {"image": "images/cat1.jpg", "text": "a sleeping kitten", "labels": ["cat"], "split": "train"}
    {"image": "images/dog7.png", "text": "a dog and a cat in a garden", "labels": ["dog", "cat"], "split": "test"}

- ``image``: path relative to the dataset folder (``images/cat1.jpg``; a bare ``cat1.jpg`` is looked up in
  ``images/`` too). Absolute paths and paths with ``..`` are rejected, always (even with ``skip_bad``).
- ``text``: the caption; empty or whitespace-only texts are bad records. Long texts are truncated by the text
  model to its maximum sequence length (256 word pieces for all-MiniLM-L6-v2).
- ``labels``: one or more class names (a list, or a single string). The class list is the sorted set of names.
- ``split`` (optional): ``train``, ``val`` or ``test``. Records without one are assigned by a hash of their image
  path (70 % train, 10 % val, 20 % test), so every caption of an image lands in the same split. Without any
  ``val`` record, validation is carved from train (``data.val_fraction``).

The CSV form has a header ``image,text,labels[,split]``; ``labels`` is ``cat|dog`` or a JSON list.

Every problem (missing or unreadable image, empty text, bad labels, unknown split) is collected and reported in
one :class:`~dscmr.errors.DataError` naming the first few offending lines; with ``data.skip_bad = true`` the bad
records are dropped and their count is reported instead. Features come from the frozen encoders in
:mod:`dscmr.encoders`, cached on disk, so only the first load of a dataset pays for encoding.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from dscmr.config import DataConfig
from dscmr.data.feature_files import SPLITS, FeatureDataset, Split, _make_split, carve_validation
from dscmr.errors import DataError

log = logging.getLogger("dscmr.data")

CAPTION_FILES = ("captions.jsonl", "captions.csv")
MAX_LISTED = 5  # offending lines quoted in an error message
HASH_SPLIT = (("test", 0.2), ("val", 0.1))  # records without a split: fraction per split, rest is train


@dataclass(frozen=True)
class Record:
    """One validated image-text pair of a folder dataset.

    Attributes:
        line: Line number in the captions file (1-based, header included for CSV).
        image: The image path as written in the file.
        path: The image file.
        text: The caption.
        labels: Class names.
        split: ``train``, ``val``, ``test`` or None (assigned later).
    """

    line: int
    image: str
    path: Path
    text: str
    labels: tuple[str, ...]
    split: str | None


@dataclass(frozen=True)
class Problem:
    """A bad record: its line and what is wrong with it."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def find_captions(root: Path) -> Path:
    """The captions file of a dataset folder.

    Raises:
        DataError: Missing folder, no captions file, or both a ``.jsonl`` and a ``.csv``.
    """
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}; check data.root or pass --data-root")
    found = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if not found:
        raise DataError(f"{root} has no captions.jsonl or captions.csv; see docs/end_to_end.md for the format")
    if len(found) > 1:
        raise DataError(f"{root} has both captions.jsonl and captions.csv; keep one of them")
    return found[0]


def _raw_rows(path: Path) -> list[tuple[int, Any]]:
    """(line, parsed row or an error string) for every non-empty record of the captions file."""
    rows: list[tuple[int, Any]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from None
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((lineno, f"not valid JSON ({exc.msg})"))
                continue
            rows.append((lineno, obj if isinstance(obj, dict) else "not a JSON object"))
        return rows
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in ("image", "text", "labels") if c not in header]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {', '.join(missing)}; expected image,text,labels[,split]")
    for row in reader:
        lineno = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        rec: dict[str, Any] = dict(row)
        raw = (rec.get("labels") or "").strip()
        if raw.startswith("["):
            try:
                rec["labels"] = json.loads(raw)
            except json.JSONDecodeError:
                rows.append((lineno, f"labels {raw!r} is not a JSON list"))
                continue
        else:
            rec["labels"] = [x.strip() for x in raw.split("|") if x.strip()]
        if rec.get("split") is not None and not str(rec["split"]).strip():
            rec["split"] = None
        rows.append((lineno, rec))
    return rows


def escapes_root(image: str) -> bool:
    """Whether a relative image path points outside the dataset folder (absolute, drive-qualified or ``..``)."""
    posix, win = PurePosixPath(image), PureWindowsPath(image)
    if posix.is_absolute() or win.is_absolute() or win.drive or image.startswith(("/", "\\")):
        return True
    return ".." in posix.parts or ".." in win.parts


def _image_header_ok(path: Path) -> str | None:
    """None if ``path`` looks like a readable image (header and, for PNG, checksums), else the reason."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:120]
    return None


def read_records(root: Path) -> tuple[Path, list[Record], list[Problem], list[Problem]]:
    """Parse and validate a folder dataset's captions file.

    Returns:
        ``(captions_path, records, problems, escapes)``: the valid records, the bad ones (skippable) and the paths
        escaping the folder (never skippable).
    """
    captions = find_captions(root)
    records: list[Record] = []
    problems: list[Problem] = []
    escapes: list[Problem] = []
    checked: dict[Path, str | None] = {}
    for lineno, obj in _raw_rows(captions):
        if isinstance(obj, str):
            problems.append(Problem(lineno, obj))
            continue
        errs: list[str] = []
        image = obj.get("image")
        path: Path | None = None
        if not isinstance(image, str) or not image.strip():
            errs.append("missing 'image' (a relative path)")
        elif escapes_root(image.strip()):
            escapes.append(Problem(lineno, f"image path {image!r} escapes the dataset folder"))
            continue
        else:
            image = image.strip()
            path = root / image
            if not path.is_file() and (root / "images" / image).is_file():
                path = root / "images" / image
            if not path.is_file():
                errs.append(f"image {image!r} not found")
            else:
                if path not in checked:
                    checked[path] = _image_header_ok(path)
                if checked[path] is not None:
                    errs.append(f"image {image!r} is unreadable ({checked[path]})")
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            errs.append("empty text")
        labels = obj.get("labels")
        if isinstance(labels, str | int):
            labels = [labels]
        if not isinstance(labels, list) or not labels:
            errs.append("no labels (give a list of class names)")
        elif not all(isinstance(x, str | int) and not isinstance(x, bool) and str(x).strip() for x in labels):
            errs.append(f"labels {labels!r} must be non-empty class names")
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            errs.append(f"unknown split {split!r} (use train, val or test)")
        if errs:
            problems.append(Problem(lineno, "; ".join(errs)))
            continue
        assert path is not None and isinstance(text, str) and isinstance(labels, list)
        names = tuple(dict.fromkeys(str(x).strip() for x in labels))
        records.append(Record(lineno, image, path, text, names, split))
    return captions, records, problems, escapes


def problems_message(source: Path, problems: list[Problem], *, hint: str) -> str:
    """One line: how many records are bad, the first few of them, and what to do."""
    listed = "; ".join(str(p) for p in problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"{source}: {len(problems)} bad record(s) -- {listed}{more}. {hint}"


def _skip_hint() -> str:
    return "Fix them, or set data.skip_bad=true (--set data.skip_bad=true) to drop them"


def hash_split(image: str) -> str:
    """Deterministic split of a record without one, from its image path (all its captions go together)."""
    u = int(hashlib.sha256(image.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    acc = 0.0
    for name, frac in HASH_SPLIT:
        acc += frac
        if u < acc:
            return name
    return "train"


def load_folder(
    root: Path,
    cfg: DataConfig,
    *,
    image_encoder: Any = None,
    text_encoder: Any = None,
    progress: bool | None = None,
) -> FeatureDataset:
    """Load a folder dataset: validate the records, encode (or fetch cached) features, build the splits.

    Args:
        root: The dataset folder.
        cfg: Data config (``skip_bad``, encoder settings, ``cache_dir``, ``val_fraction``/``val_seed``).
        image_encoder: An :class:`~dscmr.encoders.ImageEncoder` to use instead of the config's (tests).
        text_encoder: A :class:`~dscmr.encoders.TextEncoder` to use instead of the config's (tests).
        progress: Draw progress bars (default: when stderr is a terminal; ``$DSCMR_PROGRESS``).

    Raises:
        DataError: Bad records (all listed in one message) without ``skip_bad``, any path escaping the folder,
            no usable records, or an empty train/test split.
    """
    from dscmr.encoders import (
        feature_cache_for,
        image_encoder_for,
        image_features,
        text_encoder_for,
        text_features,
    )

    root = Path(root).expanduser()
    captions, records, problems, escapes = read_records(root)
    if escapes:
        raise DataError(problems_message(captions, escapes, hint="Use paths relative to the dataset folder"))
    skipped = 0
    if problems:
        if not cfg.skip_bad:
            raise DataError(problems_message(captions, problems, hint=_skip_hint()))
        skipped += len(problems)
    if not records:
        raise DataError(f"{captions}: no usable records; see docs/end_to_end.md for the format")

    image_encoder = image_encoder or image_encoder_for(cfg)
    text_encoder = text_encoder or text_encoder_for(cfg)
    cache = feature_cache_for(cfg)

    images = list(dict.fromkeys(r.path for r in records))
    img_feats = image_features(images, encoder=image_encoder, cache=cache, progress=progress)
    undecodable = {p for p, row in zip(images, img_feats, strict=True) if not np.isfinite(row).all()}
    if undecodable:
        bad = [Problem(r.line, f"image {r.image!r} cannot be decoded") for r in records if r.path in undecodable]
        if not cfg.skip_bad:
            raise DataError(problems_message(captions, bad, hint=_skip_hint()))
        skipped += len(bad)
        records = [r for r in records if r.path not in undecodable]
        if not records:
            raise DataError(f"{captions}: no usable records left after dropping undecodable images")
    if skipped:
        log.warning("%s: skipped %d bad record(s) (data.skip_bad=true)", captions, skipped)

    texts = list(dict.fromkeys(r.text for r in records))
    txt_feats = text_features(texts, encoder=text_encoder, cache=cache, progress=progress)
    img_row = {p: i for i, p in enumerate(images)}
    txt_row = {t: i for i, t in enumerate(texts)}

    class_names = tuple(sorted({name for r in records for name in r.labels}))
    if cfg.num_classes and cfg.num_classes != len(class_names):
        raise DataError(
            f"{captions}: the records name {len(class_names)} classes but data.num_classes is {cfg.num_classes}; "
            "fix the labels or set data.num_classes = 0"
        )
    class_id = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros((len(records), len(class_names)), dtype=np.float32)
    for i, r in enumerate(records):
        labels[i, [class_id[n] for n in r.labels]] = 1.0
    split_of = np.array([r.split or hash_split(r.image) for r in records])
    img_idx = np.array([img_row[r.path] for r in records], dtype=np.int64)
    txt_idx = np.array([txt_row[r.text] for r in records], dtype=np.int64)

    parts: dict[str, Split] = {}
    for name in SPLITS:
        rows = np.flatnonzero(split_of == name)
        parts[name] = _make_split(
            img_feats[img_idx[rows]],
            txt_feats[txt_idx[rows]],
            labels[rows],
            source=f"{captions} [split={name}]",
            cfg=replace(cfg, num_classes=len(class_names)),
            num_classes=len(class_names),
            one_based=False,
            img_items=tuple(str(records[i].path.resolve()) for i in rows),
            txt_items=tuple(records[i].text for i in rows),
        )
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise DataError(
            f"{captions}: needs at least one train and one test record (found {len(parts['train'])} train, "
            f"{len(parts['test'])} test); add 'split' fields"
        )
    train, val = parts["train"], parts["val"]
    if len(val) == 0:
        train, val = carve_validation(train, fraction=cfg.val_fraction, seed=cfg.val_seed)
    source = str(root) + (f" (skipped {skipped} bad records)" if skipped else "")
    return FeatureDataset(train, val, parts["test"], len(class_names), class_names, source)
