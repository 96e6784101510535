"""Raw images and texts -> cached encoder features, driven by a :class:`~dscmr.config.DataConfig`.

This is the bridge between raw data and the DSCMR model, which consumes feature vectors: the folder and built-in
dataset loaders call :func:`image_features` / :func:`text_features` to build their feature matrices, and the
retrieval layer calls :func:`encode_queries` to turn a query sentence or picture into the same kind of features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.config import DataConfig
from dscmr.encoders.cache import FeatureCache, default_cache_dir, fingerprint_files, fingerprint_texts
from dscmr.encoders.engine import resolve_engine
from dscmr.encoders.image import ImageDecodeError, ImageEncoder
from dscmr.encoders.text import TextEncoder, check_texts
from dscmr.errors import QueryError
from dscmr.utils.progress import Progress, counter

# Formats whose features come from the raw encoders (raw queries can be encoded for runs trained on them).
RAW_FORMATS = ("folder", "digits", "shapes")

_image_encoders: dict[tuple[Any, ...], ImageEncoder] = {}
_text_encoders: dict[tuple[str, str, str], TextEncoder] = {}


def image_encoder_for(cfg: DataConfig) -> ImageEncoder:
    """The (process-wide, memoised) frozen image encoder a data config describes (``data.engine`` included).

    With ``data.image_train_blocks > 0`` it is the frozen bottom of the backbone (:mod:`dscmr.encoders.partial`).
    """
    if cfg.image_train_blocks > 0:
        from dscmr.encoders.partial import partial_encoder_for

        return partial_encoder_for(cfg)
    key: tuple[Any, ...] = (cfg.image_backbone, cfg.image_size, cfg.image_fit, cfg.image_views)
    key += (cfg.image_backbone_weights, cfg.engine, cfg.cache_dir)
    if key not in _image_encoders:
        opts: dict[str, Any] = {
            "image_size": cfg.image_size,
            "fit": cfg.image_fit,
            "views": cfg.image_views,
            "weights": cfg.image_backbone_weights or None,
        }
        engine = resolve_engine(cfg.engine)
        if engine == "torch":
            _image_encoders[key] = ImageEncoder(cfg.image_backbone, **opts)
        else:
            from dscmr.encoders.engine import OnnxImageEncoder

            # exports depend only on the weights, so they live in the machine's cache, not data.cache_dir
            cache = default_cache_dir()
            _image_encoders[key] = OnnxImageEncoder(cfg.image_backbone, engine=engine, cache_dir=cache, **opts)
    return _image_encoders[key]


def text_encoder_for(cfg: DataConfig) -> TextEncoder:
    """The (process-wide, memoised) text encoder a data config describes (``data.engine`` included).

    With ``data.text_train_layers > 0`` it is the frozen bottom of the sentence encoder, giving token rows
    (:mod:`dscmr.encoders.text_partial`).
    """
    if cfg.text_train_layers > 0:
        from dscmr.encoders.text_partial import partial_text_encoder_for

        return partial_text_encoder_for(cfg)
    key = (cfg.text_model, cfg.engine, cfg.cache_dir)
    if key not in _text_encoders:
        engine = resolve_engine(cfg.engine)
        if engine == "torch":
            _text_encoders[key] = TextEncoder(cfg.text_model)
        else:
            from dscmr.encoders.engine import OnnxTextEncoder

            _text_encoders[key] = OnnxTextEncoder(cfg.text_model, engine=engine, cache_dir=default_cache_dir())
    return _text_encoders[key]


def feature_cache_for(cfg: DataConfig) -> FeatureCache:
    """The feature cache in ``data.cache_dir`` (default ``~/.cache/dscmr``)."""
    return FeatureCache(default_cache_dir(cfg.cache_dir))


def image_features(
    paths: Sequence[str | Path],
    *,
    encoder: ImageEncoder,
    cache: FeatureCache | None,
    batch_size: int = 32,
    progress: Progress | bool | None = None,
) -> np.ndarray:
    """Features of image files ``(n, d)``, from the cache when possible; unreadable files give NaN rows.

    ``progress`` (default: the current reporter, :mod:`dscmr.utils.progress`) hears ``(done, total, "image
    features")`` while images are encoded.
    """

    def compute() -> np.ndarray:
        advance = counter(progress, len(paths), "image features")
        return encoder.encode_paths(paths, batch_size=batch_size, on_error="nan", advance=advance)

    if cache is None:
        return compute()
    return cache.get_or_compute(
        encoder.cache_spec(), fingerprint_files(paths), len(paths), compute, description=f"{len(paths)} images"
    )


def text_features(
    texts: Sequence[str],
    *,
    encoder: TextEncoder,
    cache: FeatureCache | None,
    batch_size: int = 64,
    progress: Progress | bool | None = None,
) -> np.ndarray:
    """Features of texts ``(n, d)``, from the cache when possible (``progress`` as in :func:`image_features`)."""

    def compute() -> np.ndarray:
        advance = counter(progress, len(texts), "text features")
        return encoder.encode(texts, batch_size=batch_size, advance=advance)

    if cache is None:
        return compute()
    return cache.get_or_compute(
        encoder.cache_spec(), fingerprint_texts(texts), len(texts), compute, description=f"{len(texts)} texts"
    )


def encode_queries(run: Any, *, texts: list[str] | None = None, image_paths: list[str] | None = None) -> np.ndarray:
    """Raw query texts or image files -> the encoder features a run's DSCMR model takes as input.

    The run's config says which encoders produced its training features (``data.image_backbone``,
    ``data.image_size``, ``data.image_fit``, ``data.image_views``, ``data.image_backbone_weights``,
    ``data.text_model``); the same ones encode the queries. A run that trained the last layers of its sentence
    encoder (``data.text_train_layers``) gets token rows of the frozen part, which its model's text top encodes.
    Apply ``run.model.encode_text`` / ``encode_image`` to the result to get common-space embeddings.

    Args:
        run: A :class:`~dscmr.train.LoadedRun` (anything with ``.config`` and ``.model``).
        texts: Query sentences (exactly one of ``texts`` and ``image_paths``).
        image_paths: Query image files.

    Returns:
        ``(n, img_dim)`` or ``(n, txt_dim)`` float32 features.

    Raises:
        QueryError: No or both kinds of query, an empty text, an unreadable image, or a run trained on
            precomputed features (which raw queries cannot be turned into).
        ConfigError, CheckpointError: The run's text model or image backbone cannot be loaded (raised as is).
    """
    if (texts is None) == (image_paths is None):
        raise QueryError("pass exactly one of texts=... or image_paths=...")
    data: DataConfig = run.config.data
    if data.format not in RAW_FORMATS:
        raise QueryError(
            f"this run was trained on precomputed features (data.format={data.format!r}), so raw "
            f"{'texts' if texts is not None else 'images'} cannot be encoded for it; query it with feature rows, "
            f"or train on a folder/built-in dataset ({', '.join(RAW_FORMATS)})"
        )
    model = run.model
    # Errors of the run itself (a text model or backbone that cannot be loaded) keep their own type.
    if texts is not None:
        if not texts:
            raise QueryError("no query text given; pass at least one non-empty sentence")
        items = check_texts(texts, what="query text")
        feats = text_encoder_for(data).encode(items)
        expected = int(getattr(model, "txt_dim", None) or feats.shape[1])
        if data.text_train_layers > 0 and feats.shape[1] % expected == 0:
            expected = feats.shape[1]  # token rows: any number of tokens of width txt_dim
    else:
        assert image_paths is not None
        if not image_paths:
            raise QueryError("no query image given; pass at least one image file")
        enc = image_encoder_for(data)
        try:
            feats = enc.encode_paths([str(p) for p in image_paths], on_error="raise")
        except ImageDecodeError as exc:
            raise QueryError(str(exc)) from None
        expected = int(getattr(model, "img_dim", None) or feats.shape[1])
    if feats.shape[1] != expected:
        raise QueryError(
            f"the encoder gives {feats.shape[1]}-d features but the run's model expects {expected}-d; "
            "the run's data.* encoder settings do not match its training features"
        )
    return feats
