"""Training views of a folder dataset: several sentences per image, augmented image views, one row per image.

A folder dataset lists image-text pairs; an image with five sentences appears in five records. With
``data.multi_caption`` set, :func:`with_views` regroups every split to **one row per image**:

- the row's text is the image's sentences *joined* into one text and encoded (``joined``, what the Pascal Sentence
  benchmark does) or the *mean* of the sentence embeddings (``mean``); this is what validation and test rank;
- training draws, every epoch, one of the image's sentences as its positive: ``TrainViews.txt`` holds them,
  ``(S, n_train, d_txt)``, an image with fewer than ``S`` sentences repeating its own.

With ``data.image_train_views = V > 0``, ``TrainViews.img`` holds ``V`` augmented views of every training image
(random resized crops and flips, see :mod:`dscmr.encoders.partial`), ``(V, n_train, d_img)``, and training draws
one per image per epoch; validation and test use the deterministic view in ``Split.img``.

With ``data.text_train_layers > 0`` the text features are token rows of the sentence encoder's frozen part
(:mod:`dscmr.encoders.text_partial`); a ``mean`` row then holds all its sentences' tokens, and the model's text top
averages their fine-tuned sentence vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dscmr.config import (
    MULTI_CAPTION_CHOICES,  # noqa: F401 (re-exported)
    DataConfig,
)
from dscmr.data.feature_files import FeatureDataset, Split


@dataclass(frozen=True)
class TrainViews:
    """Alternative inputs of the training rows; the trainer draws one per row per epoch.

    Attributes:
        img: Image views ``(V, n_train, d_img)`` (float16 or float32), or None (the split's ``img`` only).
        txt: Text views ``(S, n_train, d_txt)``, or None (the split's ``txt`` only).
    """

    img: np.ndarray | None = None
    txt: np.ndarray | None = None


@dataclass(frozen=True)
class ViewDataset(FeatureDataset):
    """A :class:`FeatureDataset` whose training rows have several views (see the module docstring)."""

    views: TrainViews = TrainViews()


def _group_rows(split: Split) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(first_row_per_image, rows_per_image)`` in order of first appearance (needs ``img_items``)."""
    assert split.img_items is not None
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(split.img_items):
        groups.setdefault(item, []).append(i)
    rows = [np.asarray(g, dtype=np.int64) for g in groups.values()]
    return np.asarray([g[0] for g in rows], dtype=np.int64), rows


def regroup_split(split: Split, mode: str, *, encode_texts: Any, mean_rows: Any = None) -> tuple[Split, np.ndarray]:
    """One row per image: ``(split, sentence_views)`` with ``sentence_views`` ``(S, n_images, d_txt)``.

    Args:
        split: A split with one row per image-sentence pair (``img_items`` and ``txt_items`` set).
        mode: ``joined`` (encode the sentences joined with spaces) or ``mean`` (mean sentence embedding).
        encode_texts: ``texts -> (n, d_txt)`` features (the dataset's cached text encoder).
        mean_rows: ``[rows of one image (k, d_txt), ...] -> (n_images, d)`` for ``mean`` (default: the mean row;
            token rows use :func:`~dscmr.encoders.text_partial.stack_sentences`).
    """
    if len(split) == 0:
        return split, np.zeros((1, 0, split.txt.shape[1]), dtype=np.float32)
    first, rows = _group_rows(split)
    assert split.txt_items is not None
    joined = tuple(" ".join(split.txt_items[i] for i in g) for g in rows)
    if mode == "joined":
        txt = np.asarray(encode_texts(list(joined)), dtype=np.float32)  # (n_images, d_txt)
    elif mean_rows is not None:
        txt = np.asarray(mean_rows([split.txt[g] for g in rows]), dtype=np.float32)
    else:
        txt = np.stack([split.txt[g].mean(0) for g in rows]).astype(np.float32)
    s = max(len(g) for g in rows)
    sentences = np.stack([split.txt[np.resize(g, s)] for g in rows], axis=1)  # (S, n_images, d_txt)
    img_items = tuple(split.img_items[i] for i in first) if split.img_items is not None else None
    return Split(split.img[first], txt, split.labels[first], img_items, joined), sentences


def with_views(
    ds: FeatureDataset,
    cfg: DataConfig,
    *,
    encode_texts: Any,
    image_views: Any = None,
    mean_rows: Any = None,
) -> FeatureDataset:
    """The dataset regrouped per image and given training views, as ``cfg`` asks (unchanged when it asks nothing).

    Args:
        ds: A folder dataset, one row per record.
        cfg: ``multi_caption`` and ``image_train_views``.
        encode_texts: ``texts -> (n, d_txt)`` (for ``joined``).
        image_views: ``(paths, views) -> (views, n, d_img)`` augmented image features of the training images.
        mean_rows: How ``mean`` combines an image's sentence rows (see :func:`regroup_split`).
    """
    if cfg.multi_caption == "off" and cfg.image_train_views == 0:
        return ds
    parts: dict[str, Split] = {"train": ds.train, "val": ds.val, "test": ds.test}
    txt_views = None
    if cfg.multi_caption != "off":
        for name in parts:
            parts[name], sentences = regroup_split(
                parts[name], cfg.multi_caption, encode_texts=encode_texts, mean_rows=mean_rows
            )
            if name == "train":
                txt_views = sentences
    img_views = None
    if cfg.image_train_views > 0 and image_views is not None:
        assert parts["train"].img_items is not None
        img_views = image_views(list(parts["train"].img_items), cfg.image_train_views)
    return ViewDataset(
        parts["train"],
        parts["val"],
        parts["test"],
        ds.num_classes,
        ds.class_names,
        ds.source,
        views=TrainViews(img=img_views, txt=txt_views),
    )


def load_views(
    ds: FeatureDataset, cfg: DataConfig, *, text_encoder: Any = None, progress: Any = None
) -> FeatureDataset:
    """:func:`with_views` with the config's (cached) encoders: the folder loader's last step."""
    if cfg.multi_caption == "off" and cfg.image_train_views == 0:
        return ds
    from dscmr.encoders import feature_cache_for, text_encoder_for, text_features
    from dscmr.encoders.partial import partial_encoder_for, view_activations

    cache = feature_cache_for(cfg)
    encoder = text_encoder or text_encoder_for(cfg)

    def encode_texts(texts: list[str]) -> np.ndarray:
        return text_features(texts, encoder=encoder, cache=cache, progress=progress)

    def image_views(paths: list[str], views: int) -> np.ndarray:
        return view_activations(paths, encoder=partial_encoder_for(cfg), cache=cache, views=views)

    mean_rows = None
    if cfg.text_train_layers > 0:
        from dscmr.encoders.text_partial import pad_rows, stack_sentences

        def mean_rows(groups: list[np.ndarray]) -> np.ndarray:
            return pad_rows([stack_sentences(list(g), width=encoder.dim) for g in groups])

    return with_views(ds, cfg, encode_texts=encode_texts, image_views=image_views, mean_rows=mean_rows)
