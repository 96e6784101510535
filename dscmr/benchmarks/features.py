"""How good are the frozen image features? (``dscmr bench features``)

For each image backbone and preprocessing (``fit`` x ``views``, see :mod:`dscmr.encoders.image`) on a folder
dataset's ``train`` and ``val`` records:

- ``encode_seconds`` / ``encode_cpu_seconds``: wall and process CPU time to decode, preprocess and encode every
  train and val image (no feature cache); with one thread on a busy machine the CPU time is the fairer figure;
- ``probe_accuracy``: linear probe on val: logistic regression on the standardised train features (``C`` chosen by
  3-fold cross-validation on train from :data:`PROBE_CS`), top-1 accuracy of the val images' first label;
- ``lr_map``: the per-modality logistic-regression retrieval baseline on val: one classifier per modality (images:
  these features; texts: the text encoder's embeddings of each image's caption, the sentences joined), their class
  probabilities taken as the common space, cosine mAP in both directions.

An image with several records (several captions) counts once; its captions are joined with a space. Thread counts are
the caller's (the CLI sets 1 torch and 1 BLAS thread by default), and the figures are printed, never asserted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import DataError
from dscmr.utils.progress import Progress, counter

PROBE_CS = (0.01, 0.1, 1.0)  # inverse regularisation strengths tried by cross-validation on train
DEFAULT_BACKBONES = ("mobilenet_v2_100", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
DEFAULT_SETTINGS = (("crop", "one"), ("pad", "one"), ("stretch", "one"), ("crop", "flip"))


@dataclass(frozen=True)
class SplitItems:
    """The unique images of the ``train`` and ``val`` splits with their joined captions and labels.

    Attributes:
        paths: Image files, train first, then val.
        texts: One text per image (its captions joined).
        labels: Multi-hot labels ``(n, C)``.
        is_val: ``(n,)`` True for val images.
        classes: Class names, sorted.
    """

    paths: list[Path]
    texts: list[str]
    labels: np.ndarray
    is_val: np.ndarray
    classes: list[str]


@dataclass(frozen=True)
class FeatureRow:
    """Figures of one (backbone, preprocessing) setting."""

    backbone: str
    image_size: int
    fit: str
    views: str
    encode_seconds: float
    encode_cpu_seconds: float
    probe_accuracy: float
    probe_c: float
    lr_map: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeaturesReport:
    """The whole benchmark: the data, the text side (the same for every row) and one row per setting."""

    root: str
    n_train: int
    n_val: int
    threads: int
    text_model: str
    text_probe_accuracy: float
    rows: list[FeatureRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [r.to_dict() for r in self.rows]}


def load_split_items(root: str | Path) -> SplitItems:
    """The unique ``train`` and ``val`` images of a folder dataset (bad records are skipped).

    Raises:
        DataError: No captions file, or no train or no val image.
    """
    from dscmr.data.folder import read_records

    _, records, _, _ = read_records(Path(root))
    by_image: dict[Path, tuple[list[str], set[str], str]] = {}
    for r in records:
        if r.split in ("train", "val"):
            texts, labels, _ = by_image.setdefault(r.path, ([], set(), r.split))
            texts.append(r.text)
            labels.update(r.labels)
    order = sorted(by_image, key=lambda p: (by_image[p][2] == "val", str(p)))  # train first
    if not any(by_image[p][2] == "train" for p in order) or not any(by_image[p][2] == "val" for p in order):
        raise DataError(f"{root} needs records with split 'train' and split 'val' for this benchmark")
    classes = sorted({c for p in order for c in by_image[p][1]})
    multi_hot = np.zeros((len(order), len(classes)), dtype=np.float32)
    for i, p in enumerate(order):
        multi_hot[i, [classes.index(c) for c in by_image[p][1]]] = 1.0
    return SplitItems(
        paths=order,
        texts=[" ".join(by_image[p][0]) for p in order],
        labels=multi_hot,
        is_val=np.array([by_image[p][2] == "val" for p in order]),
        classes=classes,
    )


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, *, seed: int = 0) -> Any:
    """Standardise + logistic regression (an sklearn pipeline); ``C`` from :data:`PROBE_CS` by the best mean
    accuracy of a stratified 3-fold cross-validation on train (ties: the smaller ``C``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def probe(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    scores = [float(cross_val_score(probe(c), x_train, y_train, cv=folds).mean()) for c in PROBE_CS]
    best = PROBE_CS[int(np.argmax(scores))]
    return probe(best).fit(x_train, y_train)


def lr_baseline_map(img_probs: np.ndarray, txt_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cosine mAP (both directions) with class probabilities ``(n, C)`` as the common space."""
    from dscmr.eval.metrics import cross_modal_map

    res = cross_modal_map(img_probs.astype(np.float32), txt_probs.astype(np.float32), labels)
    return {k: round(float(v), 4) for k, v in res.items()}


def _first_label(labels: np.ndarray) -> np.ndarray:
    return labels.argmax(axis=1)


def bench_features(
    root: str | Path,
    *,
    backbones: Sequence[str] = DEFAULT_BACKBONES,
    settings: Sequence[tuple[str, str]] = DEFAULT_SETTINGS,
    image_size: int = 0,
    text_model: str = "",
    threads: int = 1,
    batch_size: int = 32,
    cache_dir: str | Path = "",
    progress: Progress | bool | None = None,
) -> FeaturesReport:
    """Encode the train + val images with every backbone and setting; probe and baseline each on val.

    Args:
        root: Folder dataset with ``train`` and ``val`` records.
        backbones: Registered vision models (with pretrained weights).
        settings: ``(fit, views)`` pairs.
        image_size: Input side; 0 = each backbone's own.
        text_model: Text encoder ("" = the offline all-MiniLM-L6-v2).
        threads: Recorded in the report (the caller sets the thread counts).
        batch_size: Images per backbone call.
        cache_dir: Feature cache for the text features (``""``: ``$DSCMR_CACHE`` or ``~/.cache/dscmr``); image
            features are always computed, since they are what is timed.
        progress: Progress reporter (see :mod:`dscmr.utils.progress`).
    """
    from dscmr.encoders.cache import FeatureCache, default_cache_dir
    from dscmr.encoders.extract import text_features
    from dscmr.encoders.image import ImageEncoder, load_backbone
    from dscmr.encoders.text import TextEncoder

    items = load_split_items(root)
    y = _first_label(items.labels)
    tr, va = ~items.is_val, items.is_val
    text_enc = TextEncoder(text_model)
    txt = text_features(
        items.texts, encoder=text_enc, cache=FeatureCache(default_cache_dir(cache_dir)), progress=progress
    )
    txt_probe = fit_probe(txt[tr], y[tr])
    txt_probs = txt_probe.predict_proba(txt[va])
    report = FeaturesReport(
        root=str(root),
        n_train=int(tr.sum()),
        n_val=int(va.sum()),
        threads=threads,
        text_model=text_model or "all-MiniLM-L6-v2",
        text_probe_accuracy=round(float((txt_probe.predict(txt[va]) == y[va]).mean()), 4),
    )
    for name in backbones:
        model = load_backbone(name)
        for fit, views in settings:
            enc = ImageEncoder(name, image_size=image_size, fit=fit, views=views, model=model)
            advance = counter(progress, len(items.paths), f"{name} {fit}/{views}")
            t0, c0 = time.perf_counter(), time.process_time()
            feats = enc.encode_paths(items.paths, batch_size=batch_size, advance=advance)
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
            probe = fit_probe(feats[tr], y[tr])
            report.rows.append(
                FeatureRow(
                    backbone=name,
                    image_size=enc.image_size,
                    fit=fit,
                    views=views,
                    encode_seconds=round(seconds, 3),
                    encode_cpu_seconds=round(cpu_seconds, 3),
                    probe_accuracy=round(float((probe.predict(feats[va]) == y[va]).mean()), 4),
                    probe_c=float(probe[-1].C),
                    lr_map=lr_baseline_map(probe.predict_proba(feats[va]), txt_probs, items.labels[va]),
                )
            )
    return report
