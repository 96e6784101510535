"""Datasets: (image, text, labels) splits from feature files, image+caption folders and built-in sets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dscmr.data.feature_files import (
    FEATURE_FORMATS,
    FeatureDataset,
    Split,
    carve_validation,
    load_dataset,
    resolve_data_root,
    to_multi_hot,
)

# Loaders for formats defined outside features.py (folder datasets, built-in sets) register here:
# name -> callable(root: Path, cfg: DataConfig) -> FeatureDataset
_extra_formats: dict[str, Callable[[Path, Any], FeatureDataset]] = {}


def register_format(name: str, loader: Callable[[Path, Any], FeatureDataset]) -> None:
    """Register a dataset loader under ``data.format = name``."""
    if name in FEATURE_FORMATS or name in _extra_formats:
        raise ValueError(f"data format {name!r} is already registered")
    _extra_formats[name] = loader


def _register_raw_formats() -> None:
    """Register the folder, built-in and features-folder formats (cheap: heavy imports happen in the loaders)."""
    from dscmr.data.builtin import load_digits_dataset, load_shapes_dataset
    from dscmr.data.features_dir import load_features_dir
    from dscmr.data.folder import load_folder

    for name, loader in (("folder", load_folder), ("digits", load_digits_dataset), ("shapes", load_shapes_dataset)):
        _extra_formats.setdefault(name, loader)
    _extra_formats.setdefault("features_dir", load_features_dir)  # written by `dscmr encode` (dscmr.corpus)


_register_raw_formats()

__all__ = [
    "FEATURE_FORMATS",
    "FeatureDataset",
    "Split",
    "carve_validation",
    "load_dataset",
    "register_format",
    "resolve_data_root",
    "to_multi_hot",
]
