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
  ``images/`` too). Absolute paths and paths with ``..`` are rejected, always (even with ``skip_bad``). Symbolic
  links are resolved first: one that leads outside the folder is a bad record ("outside the dataset folder"; its
  target is never opened).
- ``text``: the caption; empty or whitespace-only texts are bad records. Long texts are truncated by the text
  model to its maximum sequence length (256 word pieces for all-MiniLM-L6-v2).
- ``labels``: one or more class names (a list, or a single string). The class list is the sorted set of names.
- ``split`` (optional): ``train``, ``val`` or ``test``. Records without one are assigned by a hash of their image
  path (70 % train, 10 % val, 20 % test), so every caption of an image lands in the same split. Without any
  ``val`` record, validation is carved from train (``data.val_fraction``). A dataset with ``train`` and ``val``
  records but no ``test`` record trains, selects on val and reports val (the test split is then empty).

The CSV form has a header ``image,text,labels[,split]``; ``labels`` is ``cat|dog`` or a JSON list.

The captions file is UTF-8, read line by line: a line that is not UTF-8 is one bad record. Every problem (such a
line, missing, unreadable or oversized image, empty text, bad labels, unknown split) is collected and reported in
one :class:`~dscmr.errors.DataError` naming the first few offending lines; with ``data.skip_bad = true`` the bad
records are dropped and their count is reported instead. Rows repeating an earlier row's image and text are kept
and counted (:class:`LoadReport`). Features come from the frozen encoders in
:mod:`dscmr.encoders`, cached on disk, so only the first load of a dataset pays for encoding.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from dscmr.config import DataConfig
from dscmr.data.feature_files import SPLITS, FeatureDataset, Split, _make_split, record_splits
from dscmr.data.views import load_views
from dscmr.errors import DataError
from dscmr.utils.progress import Progress

log = logging.getLogger(__name__)

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


def find_captions(root: Path, name: str = "") -> Path:
    """The captions file of a dataset folder: ``name`` (``data.captions_file``) if given, else the default one.

    Raises:
        DataError: Missing folder, no captions file, or both a ``.jsonl`` and a ``.csv``.
    """
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}; check data.root or pass --data-root")
    if name:
        if escapes_root(name) or Path(name).suffix not in (".jsonl", ".csv") or not (root / name).is_file():
            raise DataError(f"data.captions_file {name!r} is not a .jsonl or .csv file inside {root}")
        return root / name
    found = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if not found:
        raise DataError(f"{root} has no captions.jsonl or captions.csv; see docs/end_to_end.md for the format")
    if len(found) > 1:
        raise DataError(f"{root} has both captions.jsonl and captions.csv; keep one of them")
    return found[0]


def _decoded_lines(path: Path) -> tuple[list[str], list[Problem]]:
    """The captions file's lines, each decoded on its own: a line that is not UTF-8 becomes "" and a Problem.

    A leading byte-order mark is dropped; lines end at ``\\n`` (a ``\\r`` before it is dropped too).
    """
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    lines: list[str] = []
    bad: list[Problem] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError:
            lines.append("")
            bad.append(Problem(lineno, "not valid UTF-8 text (save the file as UTF-8)"))
    return lines, bad


def _raw_rows(path: Path) -> list[tuple[int, Any]]:
    """(line, parsed row or an error string) for every non-empty record of the captions file."""
    lines, bad = _decoded_lines(path)
    rows: list[tuple[int, Any]] = [(p.line, p.message) for p in bad]
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((lineno, f"not valid JSON ({exc.msg})"))
                continue
            rows.append((lineno, obj if isinstance(obj, dict) else "not a JSON object"))
        return sorted(rows, key=lambda r: r[0])
    if bad and bad[0].line == 1:
        raise DataError(f"{path}: the header line is not valid UTF-8 text; save the file as UTF-8")
    reader = csv.DictReader(lines)
    header = reader.fieldnames or []
    missing = [c for c in ("image", "text", "labels") if c not in header]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {', '.join(missing)}; expected image,text,labels[,split]")
    for row in reader:
        if any((v or "").strip() for v in row.values() if isinstance(v, str)):
            rows.append(_csv_row(reader.line_num, row))
    return sorted(rows, key=lambda r: r[0])


def _csv_row(lineno: int, row: dict[str, Any]) -> tuple[int, Any]:
    """A CSV row as a record dict (``labels`` split on ``|`` or parsed as a JSON list), or an error string."""
    rec: dict[str, Any] = dict(row)
    raw = (rec.get("labels") or "").strip()
    if raw.startswith("["):
        try:
            rec["labels"] = json.loads(raw)
        except json.JSONDecodeError:
            return lineno, f"labels {raw!r} is not a JSON list"
    else:
        rec["labels"] = [x.strip() for x in raw.split("|") if x.strip()]
    if rec.get("split") is not None and not str(rec["split"]).strip():
        rec["split"] = None
    return lineno, rec


def escapes_root(image: str) -> bool:
    """Whether a relative image path points outside the dataset folder (absolute, drive-qualified or ``..``)."""
    posix, win = PurePosixPath(image), PureWindowsPath(image)
    if posix.is_absolute() or win.is_absolute() or win.drive or image.startswith(("/", "\\")):
        return True
    return ".." in posix.parts or ".." in win.parts


def _image_header_ok(path: Path) -> str | None:
    """None if ``path`` looks like a readable image (header and, for PNG, checksums), else the reason.

    Any failure to parse the header counts, including Pillow's decompression-bomb refusal of huge images.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Image.DecompressionBombError:
        return "too many pixels: Pillow refuses it as a possible decompression bomb"
    except Exception as exc:  # noqa: BLE001 - a hostile file may make any parser step fail
        return (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:120]
    return None


def locate_image(root: Path, image: str) -> tuple[Path | None, str | None]:
    """The file of a record's ``image`` (``root/image``, else ``root/images/image``), or why there is none.

    Symbolic links are resolved before anything else is looked at: a path that resolves outside the dataset
    folder is reported as such, whether or not its target exists, so nothing outside the folder is probed.

    Returns:
        ``(path, None)`` for a file inside the folder, else ``(None, reason)``.
    """
    inside = root.resolve()
    for candidate in (root / image, root / "images" / image):
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return None, f"image {image!r} cannot be resolved (a symbolic link loop?)"
        if not real.is_relative_to(inside):
            return None, f"image {image!r} is outside the dataset folder (a symbolic link out of it)"
        if real.is_file():
            return candidate, None
    return None, f"image {image!r} not found"


def _record_errors(obj: dict[str, Any]) -> list[str]:
    """What is wrong with a record's ``text``, ``labels`` and ``split`` (its image is checked separately)."""
    errs: list[str] = []
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        errs.append("empty text")
    labels = _labels_of(obj)
    if not isinstance(labels, list) or not labels:
        errs.append("no labels (give a list of class names)")
    elif not all(isinstance(x, str | int) and not isinstance(x, bool) and str(x).strip() for x in labels):
        errs.append(f"labels {labels!r} must be non-empty class names")
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        errs.append(f"unknown split {split!r} (use train, val or test)")
    return errs


def _labels_of(obj: dict[str, Any]) -> Any:
    labels = obj.get("labels")
    return [labels] if isinstance(labels, str | int) and not isinstance(labels, bool) else labels


def _expand_sentences(rows: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """A record with a list of ``sentences`` (and no ``text``) becomes one record per sentence, same line."""
    out: list[tuple[int, Any]] = []
    for lineno, obj in rows:
        sentences = obj.get("sentences") if isinstance(obj, dict) and "text" not in obj else None
        if isinstance(sentences, list) and sentences:
            out += [(lineno, {**obj, "text": t}) for t in sentences]
        else:
            out.append((lineno, obj))
    return out


def read_records(root: Path, *, captions_file: str = "") -> tuple[Path, list[Record], list[Problem], list[Problem]]:
    """Parse and validate a folder dataset's captions file (``captions_file``: see :func:`find_captions`).

    Returns:
        ``(captions_path, records, problems, escapes)``: the valid records, the bad ones (skippable, including
        symbolic links out of the folder) and the paths written to escape the folder (never skippable).
    """
    captions = find_captions(root, captions_file)
    records: list[Record] = []
    problems: list[Problem] = []
    escapes: list[Problem] = []
    checked: dict[Path, str | None] = {}
    for lineno, obj in _expand_sentences(_raw_rows(captions)):
        if isinstance(obj, str):
            problems.append(Problem(lineno, obj))
            continue
        image = obj.get("image")
        path: Path | None = None
        errs: list[str] = []
        if not isinstance(image, str) or not image.strip():
            errs.append("missing 'image' (a relative path)")
        elif escapes_root(image.strip()):
            escapes.append(Problem(lineno, f"image path {image!r} escapes the dataset folder"))
            continue
        else:
            image = image.strip()
            path, why = locate_image(root, image)
            if path is not None and path not in checked:
                checked[path] = _image_header_ok(path)
            if path is not None and checked[path] is not None:
                why = f"image {image!r} is unreadable ({checked[path]})"
            if why is not None:
                errs.append(why)
        errs += _record_errors(obj)
        if errs:
            problems.append(Problem(lineno, "; ".join(errs)))
            continue
        assert path is not None and isinstance(image, str)
        names = tuple(dict.fromkeys(str(x).strip() for x in _labels_of(obj)))
        records.append(Record(lineno, image, path, obj["text"], names, obj.get("split")))
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


@dataclass(frozen=True)
class LoadReport:
    """What loading a folder dataset kept and dropped; logged, and noted in the dataset's ``source``.

    Attributes:
        records: Records kept.
        skipped: Bad records dropped (``data.skip_bad = true``).
        duplicates: Kept records that repeat an earlier record's image and text.
    """

    records: int
    skipped: int
    duplicates: int

    def notes(self) -> str:
        """`` (skipped 2 bad records; 3 duplicate rows)``, or "" when there is nothing to say."""
        parts = [f"skipped {self.skipped} bad records"] if self.skipped else []
        parts += [f"{self.duplicates} duplicate rows"] if self.duplicates else []
        return f" ({'; '.join(parts)})" if parts else ""


def load_folder(
    root: Path,
    cfg: DataConfig,
    *,
    image_encoder: Any = None,
    text_encoder: Any = None,
    progress: Progress | bool | None = None,
) -> FeatureDataset:
    """Load a folder dataset: validate the records, encode (or fetch cached) features, build the splits.

    Args:
        root: The dataset folder.
        cfg: Data config (``skip_bad``, encoder settings, ``cache_dir``, ``val_fraction``/``val_seed``).
        image_encoder: An :class:`~dscmr.encoders.ImageEncoder` to use instead of the config's (tests).
        text_encoder: A :class:`~dscmr.encoders.TextEncoder` to use instead of the config's (tests).
        progress: Hears feature-extraction progress (default: the current reporter, :mod:`dscmr.utils.progress`).

    Raises:
        DataError: Bad records (all listed in one message) without ``skip_bad``, any path escaping the folder,
            no usable records, or an empty train/test split.
    """
    from dscmr.encoders import feature_cache_for, image_encoder_for, image_features, text_encoder_for, text_features

    root = Path(root).expanduser()
    captions, records, skipped = valid_records(root, skip_bad=cfg.skip_bad, captions_file=cfg.captions_file)
    cache = feature_cache_for(cfg)
    images = list(dict.fromkeys(r.path for r in records))
    img_feats = image_features(images, encoder=image_encoder or image_encoder_for(cfg), cache=cache, progress=progress)
    records, dropped = _drop_undecodable(captions, records, images, img_feats, skip_bad=cfg.skip_bad)
    report = LoadReport(len(records), skipped + dropped, count_duplicates(records))
    if report.skipped:
        log.warning("%s: skipped %d bad record(s) (data.skip_bad=true)", captions, report.skipped)
    if report.duplicates:
        log.warning(
            "%s: %d duplicate row(s) (same image and text as an earlier row; kept)", captions, report.duplicates
        )
    texts = list(dict.fromkeys(r.text for r in records))
    txt_feats = text_features(texts, encoder=text_encoder or text_encoder_for(cfg), cache=cache, progress=progress)
    img_row, txt_row = {p: i for i, p in enumerate(images)}, {t: i for i, t in enumerate(texts)}
    img_rows = img_feats[[img_row[r.path] for r in records]]  # (n_records, img_dim)
    txt_rows = txt_feats[[txt_row[r.text] for r in records]]  # (n_records, txt_dim)
    class_names, labels = _label_matrix(captions, records, num_classes=cfg.num_classes)
    train, val, test = _splits(captions, records, img_rows, txt_rows, labels, cfg=cfg, class_names=class_names)
    ds = FeatureDataset(train, val, test, len(class_names), class_names, str(root) + report.notes())
    return load_views(ds, cfg, text_encoder=text_encoder, progress=progress)  # data.multi_caption, image views


def valid_records(root: Path, *, skip_bad: bool, captions_file: str = "") -> tuple[Path, list[Record], int]:
    """The captions file, its valid records and how many bad ones were dropped.

    Raises:
        DataError: Paths escaping the folder (always), bad records without ``skip_bad``, or no usable record.
    """
    captions, records, problems, escapes = read_records(root, captions_file=captions_file)
    if escapes:
        raise DataError(problems_message(captions, escapes, hint="Use paths relative to the dataset folder"))
    if problems and not skip_bad:
        raise DataError(problems_message(captions, problems, hint=_skip_hint()))
    if not records:
        raise DataError(f"{captions}: no usable records; see docs/end_to_end.md for the format")
    return captions, records, len(problems)


def count_duplicates(records: list[Record]) -> int:
    """How many records repeat an earlier record's image file and text."""
    return len(records) - len({(r.path, r.text) for r in records})


def _drop_undecodable(
    captions: Path, records: list[Record], images: list[Path], img_feats: np.ndarray, *, skip_bad: bool
) -> tuple[list[Record], int]:
    """The records whose image was decoded (its feature row is finite) and how many were dropped.

    Raises:
        DataError: An undecodable image without ``skip_bad``, or no record left.
    """
    undecodable = {p for p, row in zip(images, img_feats, strict=True) if not np.isfinite(row).all()}
    if not undecodable:
        return records, 0
    bad = [Problem(r.line, f"image {r.image!r} cannot be decoded") for r in records if r.path in undecodable]
    if not skip_bad:
        raise DataError(problems_message(captions, bad, hint=_skip_hint()))
    kept = [r for r in records if r.path not in undecodable]
    if not kept:
        raise DataError(f"{captions}: no usable records left after dropping undecodable images")
    return kept, len(bad)


def _label_matrix(captions: Path, records: list[Record], *, num_classes: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The sorted class names and the ``(n_records, n_classes)`` multi-hot label matrix."""
    class_names = tuple(sorted({name for r in records for name in r.labels}))
    if num_classes and num_classes != len(class_names):
        raise DataError(
            f"{captions}: the records name {len(class_names)} classes but data.num_classes is {num_classes}; "
            "fix the labels or set data.num_classes = 0"
        )
    class_id = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros((len(records), len(class_names)), dtype=np.float32)
    for i, r in enumerate(records):
        labels[i, [class_id[n] for n in r.labels]] = 1.0
    return class_names, labels


def _splits(
    captions: Path,
    records: list[Record],
    img: np.ndarray,
    txt: np.ndarray,
    labels: np.ndarray,
    *,
    cfg: DataConfig,
    class_names: tuple[str, ...],
) -> tuple[Split, Split, Split]:
    """Train, val and test from the records' ``split`` fields (or :func:`hash_split`); rows align with records.

    Raises:
        DataError: No train record, or neither a val nor a test record.
    """
    split_of = np.array([r.split or hash_split(r.image) for r in records])
    parts: dict[str, Split] = {}
    for name in SPLITS:
        rows = np.flatnonzero(split_of == name)
        parts[name] = _make_split(
            img[rows],
            txt[rows],
            labels[rows],
            source=f"{captions} [split={name}]",
            cfg=replace(cfg, num_classes=len(class_names)),
            num_classes=len(class_names),
            one_based=False,
            img_items=tuple(str(records[i].path.resolve()) for i in rows),
            txt_items=tuple(records[i].text for i in rows),
        )
    return record_splits(parts, cfg, source=str(captions))
