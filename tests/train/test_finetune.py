"""Trainable image top and training views in the trainer; a folder without a test split reports val."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dscmr.config import Config, DataConfig, ModelConfig, TrainConfig
from dscmr.train import load_run, train
from dscmr.train.evaluate import evaluate_split
from tests.encoders.helpers import TEST_IMAGE_SIZE, save_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _folder(root, n=8):
    """``n`` images (train, then two val), two sentences each, two classes; no test records."""
    rows = []
    for i in range(n):
        save_image(root / f"images/im{i}.png", seed=i)
        split = "val" if i >= n - 2 else "train"
        rows.append(
            {
                "image": f"images/im{i}.png",
                "sentences": [f"a c{i % 2} thing", f"item {i}"],
                "labels": [f"c{i % 2}"],
                "split": split,
            }
        )
    (root / "sentences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def _cfg(tmp_path, **data) -> Config:
    dc = DataConfig(
        format="folder",
        root=str(_folder(tmp_path / "d")),
        captions_file="sentences.jsonl",
        image_size=TEST_IMAGE_SIZE,
        cache_dir=str(tmp_path / "cache"),
        standardize=True,
        **data,
    )
    return Config(
        data=dc,
        model=ModelConfig(img_hidden=(16,), txt_hidden=(16,), common_dim=8),
        train=TrainConfig(epochs=3, batch_size=4, lr=1e-3, patience=0, checkpoint_every=1),
    )


def test_a_folder_without_test_trains_and_reports_val(tmp_path):
    result = train(_cfg(tmp_path), tmp_path / "run", progress=False)
    assert result.split == "val" and result.summary()["split"] == "val"
    assert result.test == result.val
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["sizes"]["test"] == 0 and metrics["split"] == "val"


def test_trainable_image_top_trains_saves_and_reloads(tmp_path):
    cfg = _cfg(tmp_path, multi_caption="mean", image_train_blocks=1, image_train_views=2)
    result = train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.model.img_top is not None and run.model.spec.img_top_blocks == 1
    from dscmr.data import load_dataset

    ds = load_dataset(cfg.data)
    assert ds.views.img.shape[:2] == (2, 6) and ds.img_dim == ds.views.img.shape[2]
    again = evaluate_split(run.model, ds.val)
    assert again["avg"] == pytest.approx(result.val["avg"], abs=1e-6)


def test_image_top_starts_from_the_backbone_and_its_weights_move(tmp_path):
    cfg = _cfg(tmp_path, image_train_blocks=1)
    from dscmr.encoders.partial import partial_encoder_for

    start = {k: v.clone() for k, v in partial_encoder_for(cfg.data).top_module().state_dict().items()}
    train(cfg, tmp_path / "run", progress=False)
    trained = load_run(tmp_path / "run").model.img_top.top.state_dict()
    moved = [k for k in start if k.endswith("weight") and not torch.equal(start[k], trained[k])]
    assert moved  # the top trained ...
    bn = [k for k in start if k.endswith("running_mean")]
    assert bn and all(torch.equal(start[k], trained[k]) for k in bn)  # ... with frozen BatchNorm statistics
    assert np.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["val"]["avg"])
