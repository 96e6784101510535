"""On-disk feature cache: frozen-encoder features computed once per dataset, reused by every retraining.

An entry is keyed by the SHA-256 of a JSON description of *everything* that determines the features: the encoder
spec (backbone or text model, weights hash, preprocessing, pipeline version) and a fingerprint of the data (the
SHA-256 of each image file's bytes in order, or the texts themselves). Changing any of them -- editing an image,
adding a caption, switching the input size or fine-tuning the weights -- gives a new key, so a stale entry can never
be returned. Entries are ``<key>.npy`` (float32 ``(n, d)``) plus ``<key>.json`` (what it is), both written
atomically, so a killed run never leaves a half-written entry behind.

Layout: ``<cache_dir>/features/<key>.npy`` where ``cache_dir`` is ``data.cache_dir`` or ``~/.cache/dscmr``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.utils.io import atomic_write_json, atomic_write_with, file_sha256

CACHE_ENV = "DSCMR_CACHE"


def default_cache_dir(cache_dir: str | Path = "") -> Path:
    """``cache_dir`` if given, else ``$DSCMR_CACHE``, else ``~/.cache/dscmr``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dscmr"


def fingerprint_files(paths: Iterable[str | Path]) -> str:
    """SHA-256 over the content hashes of ``paths`` in order (a missing file contributes its absence)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update((file_sha256(p) if p.is_file() else "missing").encode())
        h.update(b"\n")
    return h.hexdigest()


def fingerprint_texts(texts: Sequence[str]) -> str:
    """SHA-256 over the texts in order (length-prefixed, so the boundaries between texts count)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(f"{len(b)}:".encode())
        h.update(b)
    return h.hexdigest()


def cache_key(spec: dict[str, Any], data_fingerprint: str, n: int) -> str:
    """The entry key: SHA-256 of the canonical JSON of the encoder spec, data fingerprint and count."""
    blob = json.dumps({"spec": spec, "data": data_fingerprint, "n": n}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


class FeatureCache:
    """A folder of cached feature matrices.

    Args:
        root: Cache folder (entries go to ``root/features``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.folder = self.root / "features"
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def load(self, key: str, *, n: int) -> np.ndarray | None:
        """The cached matrix for ``key`` if present, readable and ``n`` rows long; else None."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable entry: recompute and overwrite it
        if arr.ndim != 2 or arr.shape[0] != n or arr.dtype != np.float32:
            return None
        return arr

    def save(self, key: str, features: np.ndarray, meta: dict[str, Any]) -> Path:
        """Atomically write ``features`` and a JSON description of the entry."""
        arr = np.ascontiguousarray(features, dtype=np.float32)
        path = self.path(key)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)

        atomic_write_with(path, write)
        info = {**meta, "shape": list(arr.shape), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(self.folder / f"{key}.json", info)
        return path

    def get_or_compute(
        self,
        spec: dict[str, Any],
        data_fingerprint: str,
        n: int,
        compute: Callable[[], np.ndarray],
        *,
        description: str = "",
    ) -> np.ndarray:
        """The cached features for (``spec``, ``data_fingerprint``), computing and storing them on a miss."""
        key = cache_key(spec, data_fingerprint, n)
        hit = self.load(key, n=n)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        features = compute()
        self.save(key, features, {"spec": spec, "data": data_fingerprint, "description": description})
        return features
