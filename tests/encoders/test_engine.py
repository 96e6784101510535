"""ONNX Runtime engines: the same features as torch (per row), any batch size, their own cache entries."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dscmr.config import Config, DataConfig
from dscmr.encoders import engine as engine_module
from dscmr.encoders.engine import (
    ENGINES,
    check_engine,
    onnxruntime_available,
    require_onnxruntime,
    resolve_engine,
)
from dscmr.errors import ConfigError
from tests.encoders.helpers import TEST_IMAGE_SIZE

TEXTS = [
    "a large red circle to the left of a small blue square",
    "x",
    "two yellow triangles",
    "the long one: " + "a green square above a red circle, " * 60,  # past max_seq_length: truncated
    "a small blue triangle",
    "digit seven",
    "a green circle",
]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    if not onnxruntime_available():
        pytest.skip("onnxruntime/onnx not installed: pip install onnxruntime onnx")
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 40 + 7 * i, 70 - 5 * i), dtype=torch.uint8, generator=g) for i in range(6)]


@pytest.fixture(scope="module")
def onnx_image(onnx_cache, image_encoder):
    from dscmr.encoders.engine import OnnxImageEncoder

    return OnnxImageEncoder(engine="onnx", image_size=TEST_IMAGE_SIZE, cache_dir=onnx_cache)


@pytest.fixture(scope="module")
def onnx_text(onnx_cache, text_encoder):
    from dscmr.encoders.engine import OnnxTextEncoder

    return OnnxTextEncoder(engine="onnx", cache_dir=onnx_cache, model=text_encoder.model)


def test_unknown_engine_is_a_config_error():
    assert check_engine("onnx") == "onnx" and ENGINES == ("auto", "torch", "onnx", "onnx-int8")
    with pytest.raises(ConfigError, match="auto, torch, onnx, onnx-int8"):
        check_engine("tensorrt")
    with pytest.raises(ConfigError, match="data.engine"):
        Config(data=DataConfig(engine="onnx-fp16"))


def test_missing_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match="pip install onnxruntime onnx"):
        require_onnxruntime()


def test_onnx_image_features_match_torch_per_row(image_encoder, onnx_image, images):
    ref = image_encoder.encode_images(images)
    for batch_size in (1, 5):  # the batch axis is dynamic
        got = onnx_image.encode_images(images, batch_size=batch_size)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert _cos(ref, got).min() >= 0.9999
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_onnx_text_features_match_torch_per_row(text_encoder, onnx_text):
    ref = text_encoder.encode(TEXTS)
    for batch_size in (1, 5):
        got = onnx_text.encode(TEXTS, batch_size=batch_size)
        assert got.shape == ref.shape
        assert _cos(ref, got).min() >= 0.9999


def test_int8_text_is_close_and_int8_image_stays_float(onnx_cache, text_encoder, image_encoder, onnx_image, images):
    from dscmr.encoders.engine import OnnxImageEncoder, OnnxTextEncoder

    q_text = OnnxTextEncoder(engine="onnx-int8", cache_dir=onnx_cache, model=text_encoder.model)
    cos = _cos(text_encoder.encode(TEXTS), q_text.encode(TEXTS))
    assert 0.9 <= cos.min() and cos.max() < 1 - 1e-6  # quantized: close, yet not the float graph
    q_img = OnnxImageEncoder(engine="onnx-int8", image_size=TEST_IMAGE_SIZE, cache_dir=onnx_cache)
    np.testing.assert_array_equal(q_img.encode_images(images), onnx_image.encode_images(images))


def test_engine_is_part_of_the_feature_cache_key(tmp_path, image_encoder, onnx_image, text_encoder, onnx_text):
    from dscmr.encoders.cache import FeatureCache, cache_key

    assert onnx_image.cache_spec()["engine"] == "onnx" and "engine" not in image_encoder.cache_spec()
    keys = {cache_key(e.cache_spec(), "data", 3) for e in (image_encoder, onnx_image, text_encoder, onnx_text)}
    assert len(keys) == 4
    cache = FeatureCache(tmp_path)
    for spec, value in ((image_encoder.cache_spec(), 0.0), (onnx_image.cache_spec(), 1.0)):
        got = cache.get_or_compute(spec, "data", 2, lambda v=value: np.full((2, 3), v, np.float32))
        assert got[0, 0] == value  # torch features are never returned for the onnx engine, nor back
    assert cache.misses == 2 and cache.hits == 0


def test_exported_model_is_reused_not_re_exported(onnx_cache, onnx_image):
    from dscmr.encoders.engine import OnnxImageEncoder

    files = sorted(onnx_cache.glob("onnx/*/image.onnx"))
    assert files
    stamps = [f.stat().st_mtime_ns for f in files]
    OnnxImageEncoder(engine="onnx", image_size=TEST_IMAGE_SIZE, cache_dir=onnx_cache)
    assert [f.stat().st_mtime_ns for f in sorted(onnx_cache.glob("onnx/*/image.onnx"))] == stamps


def test_data_config_engine_selects_the_encoders(onnx_cache):
    from dscmr.encoders import image_encoder_for, text_encoder_for
    from dscmr.encoders.engine import OnnxImageEncoder, OnnxTextEncoder

    cfg = DataConfig(format="folder", image_size=TEST_IMAGE_SIZE, cache_dir=str(onnx_cache), engine="onnx")
    assert isinstance(image_encoder_for(cfg), OnnxImageEncoder)
    assert isinstance(text_encoder_for(cfg), OnnxTextEncoder)
    torch_cfg = DataConfig(format="folder", image_size=TEST_IMAGE_SIZE, cache_dir=str(onnx_cache), engine="torch")
    assert not isinstance(image_encoder_for(torch_cfg), OnnxImageEncoder)
    partial = DataConfig(format="folder", image_size=TEST_IMAGE_SIZE, image_train_blocks=1)  # engine auto
    assert not isinstance(image_encoder_for(partial), OnnxImageEncoder)  # a trainable top always runs in torch


def test_onnx_encode_paths_decodes_ahead_and_keeps_order_and_errors(tmp_path, image_encoder, onnx_image):
    from dscmr.encoders import ImageDecodeError
    from tests.encoders.helpers import save_image

    paths = [save_image(tmp_path / f"{i}.png", seed=i, size=(30 + 9 * i, 50)) for i in range(7)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    files = [*paths[:3], bad, *paths[3:]]
    ref = image_encoder.encode_paths(files, on_error="nan", batch_size=3)
    done = []
    got = onnx_image.encode_paths(files, on_error="nan", batch_size=3, advance=done.append)
    assert np.isnan(got[3]).all() and np.isnan(ref[3]).all() and sum(done) == len(files)
    keep = [i for i in range(len(files)) if i != 3]
    assert _cos(ref[keep], got[keep]).min() >= 0.9999
    with pytest.raises(ImageDecodeError, match="bad.png"):
        onnx_image.encode_paths(files, batch_size=2)


def test_train_and_encode_reject_an_unknown_engine_in_one_line(tmp_path):
    from pathlib import Path

    from typer.testing import CliRunner

    from dscmr.cli.main import app

    config = Path(__file__).resolve().parents[2] / "configs" / "shapes.toml"
    for cmd in (["train", "--out", str(tmp_path / "run")], ["encode", "--out", str(tmp_path / "feats")]):
        res = CliRunner().invoke(app, [*cmd, "--config", str(config), "--engine", "tensorrt"])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: ")
        assert "data.engine must be one of auto, torch, onnx, onnx-int8" in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "feats").exists()


def test_auto_is_the_default_and_runs_onnx_when_onnxruntime_is_installed(monkeypatch):
    assert DataConfig().engine == "auto"
    assert resolve_engine("torch") == "torch" and resolve_engine("onnx-int8") == "onnx-int8"
    expected = "onnx" if onnxruntime_available() else "torch"
    assert resolve_engine("auto") == expected
    monkeypatch.setattr(engine_module, "onnxruntime_available", lambda: False)
    assert resolve_engine("auto") == "torch"  # falls back instead of failing


def test_default_config_encoders_are_onnx_and_exported_to_the_machine_cache(onnx_cache, monkeypatch, tmp_path):
    from dscmr.encoders import extract
    from dscmr.encoders.engine import OnnxTextEncoder

    monkeypatch.setenv("DSCMR_CACHE", str(onnx_cache))  # the machine cache: exports are shared across data caches
    monkeypatch.setattr(extract, "_text_encoders", {})
    enc = extract.text_encoder_for(DataConfig(cache_dir=str(tmp_path / "features")))
    assert isinstance(enc, OnnxTextEncoder) and enc.cache_spec()["engine"] == "onnx"
    assert list(onnx_cache.glob("onnx/*/text.onnx")) and not (tmp_path / "features" / "onnx").exists()


def test_efficientnet_lite_matches_torch_at_sizes_with_odd_sides(onnx_cache):
    """TensorFlow SAME padding at odd sides (100 px: 50, 25, 13, 7) must survive the export (it once did not)."""
    from dscmr.encoders import ImageEncoder
    from dscmr.encoders.engine import OnnxImageEncoder

    ref = ImageEncoder("efficientnet_lite0", image_size=100)
    got = OnnxImageEncoder("efficientnet_lite0", engine="onnx", image_size=100, cache_dir=onnx_cache)
    x = torch.randn(3, 3, 100, 100, generator=torch.Generator().manual_seed(0))
    a, b = ref.encode_batch(x).numpy(), got.encode_batch(x).numpy()
    assert _cos(a, b).min() >= 0.9999 and np.abs(a - b).max() < 1e-3
