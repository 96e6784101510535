"""Folder dataset format: valid data, errors listed together, skip_bad, path escapes, jsonl and csv."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from dscmr.config import DataConfig
from dscmr.data import load_dataset
from dscmr.data.folder import escapes_root, hash_split, load_folder
from dscmr.errors import DataError
from tests.encoders.helpers import TEST_IMAGE_SIZE, save_image, small_records, write_folder


def _cfg(tmp_path, root, **kw) -> DataConfig:
    return DataConfig(format="folder", root=str(root), image_size=TEST_IMAGE_SIZE, cache_dir=str(tmp_path / "c"), **kw)


def test_valid_folder_jsonl(tmp_path):
    records, images = small_records()
    root = write_folder(tmp_path / "ds", records, images=images)
    ds = load_dataset(_cfg(tmp_path, root))
    assert ds.class_names == ("blue", "green", "red", "square")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 4)  # 16 records; 4 images have 2 captions
    assert ds.img_dim == 1280 and ds.txt_dim == 384
    test = ds.test
    assert test.txt_items[:2] == ("picture 0 in red", "another caption of picture 0")
    assert test.img_items[0] == test.img_items[1] and test.img_items[0].endswith("im00.png")
    np.testing.assert_array_equal(test.img[0], test.img[1])  # two captions, one image: same image features
    assert not np.allclose(test.txt[0], test.txt[1])
    # multi-label: picture 1 (val) is blue + square
    assert ds.val.labels[ds.val.txt_items.index("picture 1 in blue")].tolist() == [1, 0, 0, 1]


def test_csv_equals_jsonl(tmp_path):
    records, images = small_records()
    a = load_folder(write_folder(tmp_path / "a", records, images=images), _cfg(tmp_path, "a"))
    b = load_folder(write_folder(tmp_path / "b", records, images=images, csv=True), _cfg(tmp_path, "b"))
    assert a.class_names == b.class_names
    for name in ("train", "val", "test"):
        sa, sb = a.split(name), b.split(name)
        np.testing.assert_allclose(sa.img, sb.img, atol=1e-6)
        np.testing.assert_array_equal(sa.txt, sb.txt)
        np.testing.assert_array_equal(sa.labels, sb.labels)


def _broken(tmp_path):
    records, images = small_records()
    records[1]["image"] = "images/missing.png"  # line 2
    records[3]["text"] = "   "  # line 4
    records[5]["split"] = "dev"  # line 6
    records[6]["labels"] = []  # line 7
    root = write_folder(tmp_path / "ds", records, images=images)
    (root / "images" / "junk.png").write_bytes(b"not a png")
    with open(root / "captions.jsonl", "a") as fh:
        fh.write(json.dumps({"image": "images/junk.png", "text": "junk", "labels": ["red"]}) + "\n")  # line 17
        fh.write("{not json\n")  # line 18
    return root


def test_errors_are_listed_together(tmp_path):
    root = _broken(tmp_path)
    with pytest.raises(DataError) as exc:
        load_folder(root, _cfg(tmp_path, root))
    msg = str(exc.value)
    assert "\n" not in msg and "6 bad record(s)" in msg
    for part in (
        "line 2: image 'images/missing.png' not found",
        "line 4: empty text",
        "unknown split 'dev'",
        "line 7: no labels",
        "line 17: image 'images/junk.png' is unreadable",
    ):
        assert part in msg
    assert "and 1 more" in msg and "data.skip_bad=true" in msg


def test_skip_bad_drops_with_count(tmp_path, caplog):
    root = _broken(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dscmr.data"):
        ds = load_folder(root, _cfg(tmp_path, root, skip_bad=True))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 16 - 4
    assert "skipped 6 bad record(s)" in caplog.text and "skipped 6 bad records" in ds.source


def test_undecodable_image_found_while_encoding(tmp_path):
    records, images = small_records()
    root = write_folder(tmp_path / "ds", records, images=images)
    good = save_image(tmp_path / "x.jpg", size=(64, 64)).read_bytes()
    (root / "images" / "trunc.jpg").write_bytes(good[: len(good) // 2])  # header fine, body truncated
    records.append({"image": "images/trunc.jpg", "text": "truncated", "labels": ["red"], "split": "train"})
    write_folder(root, records)
    with pytest.raises(DataError, match="line 17: image 'images/trunc.jpg' cannot be decoded"):
        load_folder(root, _cfg(tmp_path, root))
    ds = load_folder(root, _cfg(tmp_path, root, skip_bad=True))
    assert "truncated" not in ds.train.txt_items and "skipped 1 bad records" in ds.source


@pytest.mark.parametrize("path", ["../outside.png", "images/../../x.png", "/etc/passwd", "C:\\x.png", "\\\\srv\\x"])
def test_paths_escaping_the_folder_are_rejected_even_with_skip_bad(tmp_path, path):
    assert escapes_root(path)
    records, images = small_records()
    records[2]["image"] = path
    root = write_folder(tmp_path / "ds", records, images=images)
    save_image(tmp_path / "outside.png")
    for skip in (False, True):
        with pytest.raises(DataError, match="escapes the dataset folder"):
            load_folder(root, _cfg(tmp_path, root, skip_bad=skip))


def test_bare_names_resolve_in_images_folder_and_missing_splits_are_hashed(tmp_path):
    records, images = small_records()
    for r in records:
        r["image"] = r["image"].removeprefix("images/")
        del r["split"]
    records += [dict(records[0], text=f"extra caption {k}") for k in range(3)]
    root = write_folder(tmp_path / "ds", records, images=images)
    ds = load_folder(root, _cfg(tmp_path, root, val_fraction=0.0))
    for split in ("train", "val", "test"):
        for img in ds.split(split).img_items:
            assert hash_split(img.rsplit("/", 1)[-1]) == split  # every caption of an image in its image's split
    assert sum(len(ds.split(s)) for s in ("train", "val", "test")) == len(records)


def test_missing_folder_or_captions(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_folder(tmp_path / "nope", _cfg(tmp_path, "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no captions.jsonl or captions.csv"):
        load_folder(tmp_path / "empty", _cfg(tmp_path, "empty"))
    (tmp_path / "empty" / "captions.csv").write_text("image,caption\nx.png,hi\n")
    with pytest.raises(DataError, match="lacks column"):
        load_folder(tmp_path / "empty", _cfg(tmp_path, "empty"))


def _many_captions(split_of) -> tuple[list[dict], dict[str, int]]:
    """24 images with three captions each; ``split_of(i)`` gives image i's split."""
    images = {f"images/im{i:02d}.png": i for i in range(24)}
    colours = ["red", "blue", "green"]
    records = [
        {"image": f"images/im{i:02d}.png", "text": f"caption {j} of picture {i}", "labels": [colours[i % 3]],
         "split": split_of(i)}
        for i in range(24)
        for j in range(3)
    ]  # fmt: skip
    return records, images


def _images(split) -> set[str]:
    return set(split.img_items)


def test_a_carved_validation_split_never_shares_an_image_with_train(tmp_path):
    records, images = _many_captions(lambda i: "test" if i < 6 else "train")
    root = write_folder(tmp_path / "ds", records, images=images)
    ds = load_dataset(_cfg(tmp_path, root, val_fraction=0.25))
    assert len(_images(ds.val)) == 4 and len(ds.val) == 12  # round(0.25 * 18) whole images, 3 captions each
    assert not _images(ds.train) & _images(ds.val)  # row-wise carving put captions of one image on both sides
    assert len(ds.train) + len(ds.val) == 54


def test_val_as_test_holds_the_val_images_out_and_carves_validation_from_train(tmp_path):
    records, images = _many_captions(lambda i: "val" if i < 6 else "train")
    root = write_folder(tmp_path / "ds", records, images=images)
    plain = load_dataset(_cfg(tmp_path, root))
    held = load_dataset(_cfg(tmp_path, root, val_as_test=True, val_fraction=0.25))
    assert _images(held.test) == _images(plain.val) and len(held.test) == 18
    np.testing.assert_array_equal(held.test.img, plain.val.img)
    assert len(_images(held.val)) == 4 and not _images(held.val) & _images(held.train)
    assert _images(held.train) | _images(held.val) == _images(plain.train)


def test_val_as_test_with_test_records_is_one_error(tmp_path):
    records, images = small_records()  # has train, val and test records
    root = write_folder(tmp_path / "ds", records, images=images)
    with pytest.raises(DataError, match="val_as_test holds the val records out.*found 4 val, 4 test"):
        load_dataset(_cfg(tmp_path, root, val_as_test=True))
    with pytest.raises(DataError, match="val_as_test works on folder datasets.*'npz'"):
        load_dataset(DataConfig(format="npz", root=str(tmp_path / "x.npz"), val_as_test=True))
