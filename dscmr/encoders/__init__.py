"""Raw-data encoders: images -> backbone features, texts -> sentence vectors, with an on-disk feature cache.

Example:
    >>> from dscmr.encoders import ImageEncoder, TextEncoder
    >>> img = ImageEncoder("mobilenet_v2_100", image_size=160).encode_paths(["cat.jpg"])  # (1, 1280)
    >>> txt = TextEncoder().encode(["a cat on a sofa"])  # (1, 384)

``encode_queries(run, texts=[...])`` / ``encode_queries(run, image_paths=[...])`` turn raw queries into the features
a trained run's DSCMR model consumes.
"""

from __future__ import annotations

from dscmr.encoders.cache import FeatureCache, default_cache_dir, fingerprint_files, fingerprint_texts
from dscmr.encoders.extract import (
    RAW_FORMATS,
    encode_queries,
    feature_cache_for,
    image_encoder_for,
    image_features,
    text_encoder_for,
    text_features,
)
from dscmr.encoders.image import ImageDecodeError, ImageEncoder, build_transform, load_backbone, load_image
from dscmr.encoders.text import TextEncoder, resolve_text_model

__all__ = [
    "RAW_FORMATS",
    "FeatureCache",
    "ImageDecodeError",
    "ImageEncoder",
    "TextEncoder",
    "build_transform",
    "default_cache_dir",
    "encode_queries",
    "feature_cache_for",
    "fingerprint_files",
    "fingerprint_texts",
    "image_encoder_for",
    "image_features",
    "load_backbone",
    "load_image",
    "resolve_text_model",
    "text_encoder_for",
    "text_features",
]
