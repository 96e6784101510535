"""encode_queries: raw query texts / image files -> the features a run's model consumes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dscmr.config import Config, DataConfig
from dscmr.encoders import encode_queries
from dscmr.errors import QueryError
from tests.encoders.helpers import TEST_IMAGE_SIZE, save_image


def _run(fmt: str = "folder", img_dim: int = 1280, txt_dim: int = 384):
    cfg = Config(data=DataConfig(format=fmt, image_size=TEST_IMAGE_SIZE))
    return SimpleNamespace(config=cfg, model=SimpleNamespace(img_dim=img_dim, txt_dim=txt_dim))


def test_texts_and_images(tmp_path, text_encoder):
    txt = encode_queries(_run(), texts=["a red circle", "two blue squares"])
    assert txt.shape == (2, 384) and txt.dtype == np.float32
    np.testing.assert_allclose(txt, text_encoder.encode(["a red circle", "two blue squares"]), atol=1e-5)
    img = encode_queries(_run(), image_paths=[str(save_image(tmp_path / "q.png"))])
    assert img.shape == (1, 1280) and np.isfinite(img).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"texts": []}, "no query text"),
        ({"texts": ["ok", "  "]}, "query text 1 is empty"),
        ({"image_paths": []}, "no query image"),
        ({"texts": ["a"], "image_paths": ["b"]}, "exactly one"),
        ({}, "exactly one"),
    ],
)
def test_bad_queries(kwargs, match):
    with pytest.raises(QueryError, match=match):
        encode_queries(_run(), **kwargs)


def test_unreadable_image_and_feature_runs(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(QueryError, match="cannot decode"):
        encode_queries(_run(), image_paths=[str(tmp_path / "bad.jpg")])
    with pytest.raises(QueryError, match="not found"):
        encode_queries(_run(), image_paths=[str(tmp_path / "missing.jpg")])
    with pytest.raises(QueryError, match="precomputed features"):
        encode_queries(_run("wikipedia"), texts=["x"])
    with pytest.raises(QueryError, match="expects 10-d"):
        encode_queries(_run(txt_dim=10), texts=["x"])
