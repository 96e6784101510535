"""Several sentences per image: one row per image (joined or mean text), every sentence a training view."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dscmr.config import DataConfig
from dscmr.data import load_dataset
from dscmr.data.views import ViewDataset
from dscmr.errors import DataError
from tests.encoders.helpers import TEST_IMAGE_SIZE, save_image


def _sentence_folder(root, *, n=6, splits=("train", "train", "train", "val", "val", "test")):
    """``n`` images with 1..3 sentences each in ``sentences.jsonl`` (and a joined ``captions.jsonl``)."""
    rows = []
    for i in range(n):
        save_image(root / f"images/im{i}.png", seed=i)
        sentences = [f"picture {i} sentence {j}" for j in range(1 + i % 3)]
        rows.append({"image": f"images/im{i}.png", "sentences": sentences, "labels": [f"c{i % 2}"], "split": splits[i]})
    (root / "sentences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    joined = [{**{k: v for k, v in r.items() if k != "sentences"}, "text": " ".join(r["sentences"])} for r in rows]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in joined), encoding="utf-8")
    return root


def _cfg(tmp_path, root, **kw) -> DataConfig:
    kw = {"captions_file": "sentences.jsonl", **kw}
    return DataConfig(format="folder", root=str(root), image_size=TEST_IMAGE_SIZE, cache_dir=str(tmp_path / "c"), **kw)


def test_each_sentence_is_a_record_without_multi_caption(tmp_path):
    ds = load_dataset(_cfg(tmp_path, _sentence_folder(tmp_path / "d")))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1 + 2 + 3, 1 + 2, 3)
    assert ds.train.txt_items[:3] == ("picture 0 sentence 0", "picture 1 sentence 0", "picture 1 sentence 1")


@pytest.mark.parametrize("mode", ["joined", "mean"])
def test_multi_caption_gives_one_row_per_image_and_sentence_views(tmp_path, mode):
    root = _sentence_folder(tmp_path / "d")
    per_record = load_dataset(_cfg(tmp_path, root))
    ds = load_dataset(_cfg(tmp_path, root, multi_caption=mode))
    assert isinstance(ds, ViewDataset)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3, 2, 1)
    assert ds.train.txt_items[2] == "picture 2 sentence 0 picture 2 sentence 1 picture 2 sentence 2"
    views = ds.views.txt
    assert views is not None and views.shape == (3, 3, ds.txt_dim)  # (max sentences, train images, d)
    np.testing.assert_array_equal(views[:, 0], np.repeat(per_record.train.txt[:1], 3, axis=0))  # 1 sentence, repeated
    np.testing.assert_array_equal(views[:, 2], per_record.train.txt[3:6])
    np.testing.assert_array_equal(ds.train.img[1], per_record.train.img[1])
    if mode == "mean":
        np.testing.assert_allclose(ds.train.txt[2], per_record.train.txt[3:6].mean(0), rtol=1e-6)
    else:  # the joined text, encoded: what captions.jsonl holds
        joined = load_dataset(_cfg(tmp_path, root, captions_file=""))
        np.testing.assert_allclose(ds.train.txt, joined.train.txt, rtol=1e-5, atol=1e-6)
    assert ds.views.img is None


def test_image_train_views_are_augmented_copies_of_the_training_images(tmp_path):
    root = _sentence_folder(tmp_path / "d")
    ds = load_dataset(_cfg(tmp_path, root, multi_caption="mean", image_train_views=2))
    assert ds.views.img is not None and ds.views.img.shape == (2, 3, ds.img_dim)
    assert not np.allclose(ds.views.img[0], ds.train.img)


def test_captions_file_must_be_inside_the_folder(tmp_path):
    root = _sentence_folder(tmp_path / "d")
    with pytest.raises(DataError, match="captions_file"):
        load_dataset(_cfg(tmp_path, root, captions_file="../x.jsonl"))
