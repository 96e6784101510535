"""Feature cache: hit on the second call, invalidated by data/encoder changes, atomic and self-healing."""

from __future__ import annotations

import numpy as np

from dscmr.encoders import FeatureCache, image_features, text_features
from dscmr.encoders.cache import cache_key
from tests.encoders.helpers import save_image


def test_image_cache_hit_then_invalidated_by_changed_image(tmp_path, image_encoder):
    paths = [save_image(tmp_path / "img" / f"{i}.png", seed=i) for i in range(3)]
    cache = FeatureCache(tmp_path / "cache")
    calls = image_encoder.calls
    first = image_features(paths, encoder=image_encoder, cache=cache)
    assert image_encoder.calls > calls and cache.misses == 1
    calls = image_encoder.calls
    second = image_features(paths, encoder=image_encoder, cache=cache)
    assert image_encoder.calls == calls and cache.hits == 1  # no backbone call the second time
    np.testing.assert_array_equal(first, second)

    save_image(paths[1], seed=99)  # same name, new content
    third = image_features(paths, encoder=image_encoder, cache=cache)
    assert image_encoder.calls > calls and cache.misses == 2
    np.testing.assert_allclose(third[[0, 2]], first[[0, 2]], atol=1e-5)
    assert not np.allclose(third[1], first[1])
    leftovers = [p.name for p in (tmp_path / "cache" / "features").iterdir() if p.suffix not in (".npy", ".json")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_image_cache_key_depends_on_preprocessing(tmp_path, image_encoder):
    from dscmr.encoders import ImageEncoder

    other = ImageEncoder(image_size=48, model=image_encoder.model)
    assert cache_key(other.cache_spec(), "x", 1) != cache_key(image_encoder.cache_spec(), "x", 1)


def test_text_cache_hit_then_invalidated_by_changed_text(tmp_path, text_encoder):
    cache = FeatureCache(tmp_path)
    texts = ["a red circle", "a blue square"]
    calls = text_encoder.calls
    a = text_features(texts, encoder=text_encoder, cache=cache)
    b = text_features(texts, encoder=text_encoder, cache=cache)
    assert text_encoder.calls == calls + 1 and cache.hits == 1
    np.testing.assert_array_equal(a, b)
    text_features(["a red circle", "a blue squares"], encoder=text_encoder, cache=cache)
    assert text_encoder.calls == calls + 2 and cache.misses == 2


def test_corrupt_entry_is_recomputed(tmp_path):
    cache = FeatureCache(tmp_path)
    spec = {"kind": "test"}
    calls = []

    def compute():
        calls.append(1)
        return np.ones((2, 3), dtype=np.float32)

    cache.get_or_compute(spec, "fp", 2, compute)
    cache.path(cache_key(spec, "fp", 2)).write_bytes(b"truncated")
    out = cache.get_or_compute(spec, "fp", 2, compute)
    assert len(calls) == 2 and out.shape == (2, 3)
    assert cache.get_or_compute(spec, "fp", 2, compute).shape == (2, 3) and len(calls) == 2
