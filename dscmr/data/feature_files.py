"""Benchmark feature datasets ("feature mode"): image features, text features and multi-hot labels per split.

Three on-disk formats are read:

1. ``wikipedia``: ``raw_features.mat`` with ``<I>_tr``, ``<I>_te``, ``<T>_tr``, ``<T>_te`` plus
   ``trainset_txt_img_cat.list`` / ``testset_txt_img_cat.list`` (``text_id<TAB>image_id<TAB>category``, 1-based).
2. ``dscmr``: the DSCMR release layout, ``{train,test}_{img,txt,img_lab}.mat``, each with one matrix stored
   under its file stem.
3. ``npz``: one ``.npz`` with ``img`` (n, di), ``txt`` (n, dt), ``labels`` (n,) 0-based class ids or (n, C)
   multi-hot, and ``split`` (n,) strings ``train``/``val``/``test``.

Every loader checks that row counts agree, dimensions match the config, values are finite and label ids are in
range, and raises :class:`~dscmr.errors.DataError` naming the file and the problem. When the data has no
validation split, one is carved from the training split (stratified, seeded).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dscmr.config import DataConfig
from dscmr.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split of a paired image-text dataset.

    Attributes:
        img: Image features or inputs, ``(n, d_img)`` float32.
        txt: Text features, ``(n, d_txt)`` float32.
        labels: Multi-hot labels, ``(n, C)`` float32.
        img_items: Per-row image identifier (file name, path or id), or None.
        txt_items: Per-row text identifier or the text itself, or None.
    """

    img: np.ndarray
    txt: np.ndarray
    labels: np.ndarray
    img_items: tuple[str, ...] | None = None
    txt_items: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.img.shape[0])

    def subset(self, idx: np.ndarray) -> Split:
        """Rows ``idx`` of this split."""
        pick = lambda items: None if items is None else tuple(items[i] for i in idx)  # noqa: E731
        return Split(self.img[idx], self.txt[idx], self.labels[idx], pick(self.img_items), pick(self.txt_items))


@dataclass(frozen=True)
class FeatureDataset:
    """Train/validation/test splits of a paired dataset plus its label space."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] | None = None
    source: str = ""

    @property
    def img_dim(self) -> int:
        return int(self.train.img.shape[1])

    @property
    def txt_dim(self) -> int:
        return int(self.train.txt.shape[1])

    def split(self, name: str) -> Split:
        """Return a split by name (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, name)


# ----------------------------------------------------------------------------------------------------------------
# Labels


def to_multi_hot(labels: np.ndarray, num_classes: int, *, source: str, one_based: bool = False) -> np.ndarray:
    """Convert class ids ``(n,)``/``(n, 1)`` or a multi-hot matrix ``(n, C)`` to float32 multi-hot ``(n, C)``.

    Raises:
        DataError: Ids out of range, non-integer ids, or a multi-hot matrix of the wrong width or values.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 1:
        if labels.size and not np.all(np.isfinite(labels.astype(np.float64))):
            raise DataError(f"{source}: labels contain NaN or Inf")
        ids = labels.astype(np.int64)
        if not np.array_equal(ids, labels.astype(np.float64)):
            raise DataError(f"{source}: class ids must be integers")
        if one_based:
            ids = ids - 1
        lo = 1 if one_based else 0
        bad = (ids < 0) | (ids >= num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: label id {int(labels[i])} at row {i} is out of range {lo}..{num_classes - 1 + lo}; "
                "fix the labels or set data.num_classes"
            )
        out = np.zeros((ids.shape[0], num_classes), dtype=np.float32)
        out[np.arange(ids.shape[0]), ids] = 1.0
        return out
    if labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise DataError(f"{source}: multi-hot labels have {labels.shape[1]} columns, expected {num_classes}")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{source}: multi-hot labels must contain only 0 and 1")
        return labels.astype(np.float32)
    raise DataError(f"{source}: labels must be 1-D class ids or a 2-D multi-hot matrix, got shape {labels.shape}")


def _infer_classes(labels: np.ndarray, *, one_based: bool) -> int:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return int(labels.shape[1])
    if labels.size == 0:
        return 0
    return int(np.max(labels)) + (0 if one_based else 1)


def primary_class(labels: np.ndarray) -> np.ndarray:
    """First positive class of each multi-hot row (used for stratification and per-class tables)."""
    return np.asarray(labels).argmax(axis=1)


# ----------------------------------------------------------------------------------------------------------------
# Checks


def _check_matrix(x: np.ndarray, *, source: str, expected_dim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{source}: {what} must be a 2-D matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{source}: {what} must be numeric, got dtype {x.dtype}")
    if expected_dim and x.shape[1] != expected_dim:
        raise DataError(
            f"{source}: {what} has dimension {x.shape[1]}, config expects {expected_dim}; "
            "fix the data or set data.img_dim/data.txt_dim (0 = accept any)"
        )
    x = x.astype(np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise DataError(f"{source}: {what} contains NaN or Inf (first at row {row}); clean the features")
    return np.ascontiguousarray(x)


def _check_rows(source: str, **arrays: np.ndarray) -> None:
    counts = {k: int(np.asarray(v).shape[0]) for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        desc = ", ".join(f"{k}={v}" for k, v in counts.items())
        raise DataError(f"{source}: row counts disagree ({desc}); every row must be one image-text pair")


def _make_split(
    img: np.ndarray,
    txt: np.ndarray,
    labels: np.ndarray,
    *,
    source: str,
    cfg: DataConfig,
    num_classes: int,
    one_based: bool,
    img_items=None,
    txt_items=None,
) -> Split:
    _check_rows(source, image=img, text=txt, labels=labels)
    img = _check_matrix(img, source=source, expected_dim=cfg.img_dim, what="image features")
    txt = _check_matrix(txt, source=source, expected_dim=cfg.txt_dim, what="text features")
    lab = to_multi_hot(labels, num_classes, source=source, one_based=one_based)
    return Split(img, txt, lab, img_items, txt_items)


# ----------------------------------------------------------------------------------------------------------------
# Validation split


def carve_validation(
    train: Split, *, fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[Split, Split]:
    """Split ``train`` into (train, val), stratified by the first label, reproducibly by ``seed``.

    With ``groups`` (one key per row, e.g. the image of each caption record), whole groups go to one side, so an
    image with several captions never lands in both; with one row per group this is the row-wise split.
    """
    keys = list(groups) if groups is not None else list(range(len(train)))
    first: dict[object, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    order = list(first.values())  # each group's first row, groups in order of first appearance
    n = len(order)
    if fraction <= 0 or n < 2:
        empty = train.subset(np.zeros(0, dtype=np.int64))
        return train, empty
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    n_val = max(1, int(round(n * fraction)))
    strat = primary_class(train.labels[order])
    try:
        tr_idx, va_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strat)
    except ValueError:  # a class with a single sample cannot be stratified
        tr_idx, va_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=None)
    in_val = {keys[order[i]] for i in va_idx}
    val_rows = np.array([k in in_val for k in keys])
    return train.subset(np.flatnonzero(~val_rows)), train.subset(np.flatnonzero(val_rows))


def record_splits(parts: dict[str, Split], cfg: DataConfig, *, source: str) -> tuple[Split, Split, Split]:
    """Train, val and test of a dataset whose rows are records with ``split`` fields (folders, features folders).

    ``data.val_as_test`` holds the val records out as the test split. A missing val split is carved out of train
    by whole images (``img_items``), so an image's captions never straddle train and val.

    Raises:
        DataError: No train record, neither val nor test records, or ``val_as_test`` with test records or no val.
    """
    n = {name: len(parts[name]) for name in SPLITS}
    if n["train"] == 0 or n["test"] + n["val"] == 0:
        raise DataError(
            f"{source}: needs at least one train record and one val or test record (found {n['train']} train, "
            f"{n['val']} val, {n['test']} test); add 'split' fields"
        )
    train, val, test = parts["train"], parts["val"], parts["test"]
    if cfg.val_as_test:
        if n["test"] or not n["val"]:
            raise DataError(
                f"{source}: data.val_as_test holds the val records out as the test split, so it needs val records "
                f"and no test records (found {n['val']} val, {n['test']} test); set data.val_as_test = false"
            )
        val, test = test, val  # val is now empty: carved from train below
    if len(val) == 0:
        train, val = carve_validation(train, fraction=cfg.val_fraction, seed=cfg.val_seed, groups=train.img_items)
    return train, val, test


# ----------------------------------------------------------------------------------------------------------------
# Readers


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(f"data file not found: {path}; check data.root or pass --data-root")
    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise DataError(f"{path}: cannot read .mat file ({type(exc).__name__}: {exc})") from None


def _mat_key(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: key {key!r} not found (available: {keys}); check data.text_key/data.image_key")
    return np.asarray(mat[key])


def _read_list(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    txt_ids, img_ids, cats = [], [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise DataError(f"{path}:{lineno}: expected text_id<TAB>image_id<TAB>category, got {line!r}")
        try:
            cats.append(int(parts[2]))
        except ValueError:
            raise DataError(f"{path}:{lineno}: category {parts[2]!r} is not an integer") from None
        txt_ids.append(parts[0].strip())
        img_ids.append(parts[1].strip())
    return txt_ids, img_ids, np.asarray(cats, dtype=np.int64)


def load_wikipedia(root: Path, cfg: DataConfig) -> FeatureDataset:
    """Read the Wikipedia dataset layout (see module docstring)."""
    mat_path = root / "raw_features.mat"
    mat = _loadmat(mat_path)
    splits: dict[str, Split] = {}
    names_path = root / "categories.list"
    class_names = None
    if names_path.is_file():
        class_names = tuple(x.strip() for x in names_path.read_text(encoding="utf-8").splitlines() if x.strip())
    lists = {"train": root / "trainset_txt_img_cat.list", "test": root / "testset_txt_img_cat.list"}
    parsed = {k: _read_list(p) for k, p in lists.items()}
    inferred = len(class_names) if class_names else max(int(c.max()) for _, _, c in parsed.values())
    num_classes = cfg.num_classes or inferred
    for name, suffix in (("train", "tr"), ("test", "te")):
        txt_ids, img_ids, cats = parsed[name]
        img = _mat_key(mat, f"{cfg.image_key}_{suffix}", mat_path)
        txt = _mat_key(mat, f"{cfg.text_key}_{suffix}", mat_path)
        source = f"{mat_path} [{cfg.image_key}_{suffix}/{cfg.text_key}_{suffix}] + {lists[name].name}"
        splits[name] = _make_split(
            img,
            txt,
            cats,
            source=source,
            cfg=cfg,
            num_classes=num_classes,
            one_based=True,
            img_items=tuple(img_ids),
            txt_items=tuple(txt_ids),
        )
    train, val = carve_validation(splits["train"], fraction=cfg.val_fraction, seed=cfg.val_seed)
    return FeatureDataset(train, val, splits["test"], num_classes, class_names, str(root))


def load_dscmr_release(root: Path, cfg: DataConfig) -> FeatureDataset:
    """Read the DSCMR release layout: ``{train,test}_{img,txt,img_lab}.mat``, one matrix per file stem.

    Labels may be class ids or multi-hot; ids starting at 1 are treated as 1-based.
    """
    raw: dict[str, dict[str, np.ndarray]] = {}
    for split in ("train", "test"):
        raw[split] = {}
        for part in ("img", "txt", "img_lab"):
            path = root / f"{split}_{part}.mat"
            raw[split][part] = _mat_key(_loadmat(path), f"{split}_{part}", path)
    all_labels = [raw[s]["img_lab"] for s in ("train", "test")]
    is_ids = all(lab.ndim == 1 or lab.shape[1] == 1 for lab in all_labels)
    one_based = is_ids and min(int(np.min(lab)) for lab in all_labels if lab.size) >= 1
    num_classes = cfg.num_classes or max(_infer_classes(lab, one_based=one_based) for lab in all_labels)
    splits = {
        s: _make_split(
            raw[s]["img"],
            raw[s]["txt"],
            raw[s]["img_lab"],
            source=str(root / f"{s}_*.mat"),
            cfg=cfg,
            num_classes=num_classes,
            one_based=one_based,
        )
        for s in ("train", "test")
    }
    train, val = carve_validation(splits["train"], fraction=cfg.val_fraction, seed=cfg.val_seed)
    return FeatureDataset(train, val, splits["test"], num_classes, None, str(root))


def load_npz(path: Path, cfg: DataConfig) -> FeatureDataset:
    """Read a generic ``.npz`` with ``img``, ``txt``, ``labels`` and ``split`` arrays."""
    if path.is_dir():
        candidates = sorted(path.glob("*.npz"))
        if len(candidates) != 1:
            raise DataError(f"{path}: expected exactly one .npz file in the folder, found {len(candidates)}")
        path = candidates[0]
    if not path.is_file():
        raise DataError(f"data file not found: {path}; check data.root or pass --data-root")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("img", "txt", "labels", "split") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; expected img, txt, labels, split")
    split = arrays["split"].astype(str)
    _check_rows(str(path), img=arrays["img"], txt=arrays["txt"], labels=arrays["labels"], split=split)
    unknown = sorted(set(split.tolist()) - set(SPLITS))
    if unknown:
        raise DataError(f"{path}: unknown split value(s) {unknown}; use train, val or test")
    labels = arrays["labels"]
    num_classes = cfg.num_classes or _infer_classes(labels, one_based=False)
    parts = {}
    for name in SPLITS:
        idx = np.flatnonzero(split == name)
        parts[name] = _make_split(
            arrays["img"][idx],
            arrays["txt"][idx],
            labels[idx],
            source=f"{path} [split={name}]",
            cfg=cfg,
            num_classes=num_classes,
            one_based=False,
            img_items=tuple(str(i) for i in idx),
            txt_items=tuple(str(i) for i in idx),
        )
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise DataError(f"{path}: needs at least one 'train' and one 'test' row")
    train, val = parts["train"], parts["val"]
    if len(val) == 0:
        train, val = carve_validation(train, fraction=cfg.val_fraction, seed=cfg.val_seed)
    return FeatureDataset(train, val, parts["test"], num_classes, None, str(path))


FEATURE_FORMATS = {"wikipedia": load_wikipedia, "dscmr": load_dscmr_release, "npz": load_npz}


def resolve_data_root(cfg: DataConfig, data_root: str | Path | None = None) -> Path:
    """Data location: ``data_root`` (``--data-root``), else ``$DSCMR_DATA``, else ``cfg.root``."""
    root = data_root or os.environ.get("DSCMR_DATA") or cfg.root
    return Path(root).expanduser()


def load_dataset(cfg: DataConfig, data_root: str | Path | None = None) -> FeatureDataset:
    """Load the dataset a config describes (feature formats here; folder and built-in formats by their module)."""
    root = resolve_data_root(cfg, data_root)
    fmt = cfg.format
    if fmt in FEATURE_FORMATS:
        if cfg.val_as_test:
            raise DataError(
                f"data.val_as_test works on folder datasets (records with a split), not data.format = {fmt!r}; "
                "set data.val_as_test = false"
            )
        if not root.exists():
            raise DataError(f"data not found at {root}; pass --data-root, set DSCMR_DATA or fix data.root")
        return FEATURE_FORMATS[fmt](root, cfg)
    from dscmr.data import _extra_formats

    loader = _extra_formats.get(fmt)
    if loader is None:
        known = ", ".join(sorted([*FEATURE_FORMATS, *_extra_formats]))
        raise DataError(f"unknown data.format {fmt!r}; use one of {known}")
    return loader(root, cfg)


def with_dims(cfg: DataConfig, ds: FeatureDataset) -> DataConfig:
    """The data config with the dimensions and class count filled in from a loaded dataset."""
    return replace(cfg, img_dim=ds.img_dim, txt_dim=ds.txt_dim, num_classes=ds.num_classes)
