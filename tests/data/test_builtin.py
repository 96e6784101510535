"""Built-in generated datasets: deterministic, documented sizes and labels, valid folder datasets."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from dscmr.config import DataConfig
from dscmr.data import builtin, load_dataset
from dscmr.utils.io import file_sha256


def _listing(folder):
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(folder):
    return [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]


def test_shapes_is_deterministic_and_prefix_stable(tmp_path):
    a = builtin.generate_shapes(tmp_path / "a", n=30)
    b = builtin.generate_shapes(tmp_path / "b", n=30)
    assert _listing(a) == _listing(b)
    c = builtin.generate_shapes(tmp_path / "c", n=12)
    assert _records(c) == _records(a)[:12]
    assert _listing(c)["images/shapes_00011.png"] == _listing(a)["images/shapes_00011.png"]


def test_shapes_labels_match_captions_and_pictures(tmp_path):
    folder = builtin.generate_shapes(tmp_path / "s", n=60)
    records = _records(folder)
    assert len(records) == 60 and len(list((folder / "images").glob("*.png"))) == 60
    assert Counter(r["split"] for r in records) == {"train": 42, "val": 6, "test": 12}
    vocab = set(builtin.COLOURS) | set(builtin.SHAPE_NAMES)
    for r in records:
        assert set(r["labels"]) <= vocab and 2 <= len(r["labels"]) <= 6
        words = set(r["text"].replace(",", " ").replace(":", " ").split())
        words |= {w[:-1] for w in words if w.endswith("s")}  # "two yellow circles"
        assert set(r["labels"]) <= words, r
    from PIL import Image

    with Image.open(folder / records[0]["image"]) as im:
        assert im.size == (128, 128) and im.mode == "RGB"
        objs, _ = builtin.shapes_scene(0)
        colours = {builtin.COLOURS[o["colour"]] for o in objs}
        pixels = {tuple(int(v) for v in p) for p in np.asarray(im).reshape(-1, 3)}
        assert all(any(sum(abs(a - b) for a, b in zip(c, p, strict=True)) < 6 for p in pixels) for c in colours)


def test_digits_sizes_labels_and_determinism(tmp_path):
    folder = builtin.generate_digits(tmp_path / "d")
    records = _records(folder)
    assert len(records) == 1797
    assert Counter(r["split"] for r in records) == {"train": 1259, "val": 179, "test": 359}
    assert {r["labels"][0] for r in records} == set(builtin.DIGIT_NAMES)
    assert all(len(r["labels"]) == 1 for r in records)
    d = builtin.DIGIT_NAMES.index(records[0]["labels"][0])
    assert builtin.DIGIT_NAMES[d] in records[0]["text"] or str(d) in records[0]["text"]
    assert len({r["text"].replace(r["labels"][0], "").strip() for r in records}) > 5  # varied templates
    small = builtin.generate_digits(tmp_path / "small", n=40)
    assert _records(small) == records[:40]
    assert _listing(small)["images/digit_0007.png"] == file_sha256(folder / "images/digit_0007.png")
    from PIL import Image

    with Image.open(folder / "images/digit_0000.png") as im:
        assert im.size == (64, 64) and im.mode == "L"


@pytest.mark.parametrize("fmt", ["shapes", "digits"])
def test_builtin_formats_load_as_datasets(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(builtin, "SHAPES_DEFAULT_N", 40)
    real = builtin.generate_digits
    monkeypatch.setattr(builtin, "generate_digits", lambda folder, **kw: real(folder, **{**kw, "n": 60}))
    cfg = DataConfig(format=fmt, image_size=32, cache_dir=str(tmp_path))
    ds = load_dataset(cfg)
    assert ds.txt_dim == 384 and ds.img_dim == 1280 and len(ds.test) > 0 and len(ds.val) > 0
    assert ds.num_classes == (7 if fmt == "shapes" else len({tuple(r) for r in ds.train.labels.tolist()}))
    assert (tmp_path / "datasets").is_dir() and (tmp_path / "features").is_dir()
