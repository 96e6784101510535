"""Feature-mode loaders: the three formats, the validation split and the load-time checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from dscmr.config import DataConfig
from dscmr.data import carve_validation, load_dataset, to_multi_hot
from dscmr.data.feature_files import Split
from dscmr.errors import DataError
from tests.conftest import make_clustered_features


def write_wikipedia(root: Path, *, n_tr=60, n_te=20, nan=False, bad_cat=False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    img, txt, lab = make_clustered_features(n_tr + n_te, 3, img_dim=12, txt_dim=5, seed=1)
    if nan:
        img[3, 2] = np.nan
    mats = {
        "I_tr": img[:n_tr].astype(np.float64),
        "I_te": img[n_tr:].astype(np.float64),
        "T_tr": txt[:n_tr].astype(np.float64),
        "T_te": txt[n_tr:].astype(np.float64),
        "T_tfidf_tr": np.ones((n_tr, 7)),
        "T_tfidf_te": np.ones((n_te, 7)),
    }
    savemat(root / "raw_features.mat", mats)
    cats = lab + 1
    if bad_cat:
        cats[0] = 9
    for name, rows in (("trainset", range(n_tr)), ("testset", range(n_tr, n_tr + n_te))):
        lines = [f"t{i}\ti{i}\t{cats[i]}" for i in rows]
        (root / f"{name}_txt_img_cat.list").write_text("\n".join(lines) + "\n")
    (root / "categories.list").write_text("a\nb\nc\n")
    return root


def test_wikipedia_layout(tmp_path):
    root = write_wikipedia(tmp_path / "wiki")
    ds = load_dataset(DataConfig(format="wikipedia", root=str(root), val_fraction=0.2))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 12, 20)
    assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
    assert ds.train.labels.shape == (48, 3) and set(np.unique(ds.train.labels)) == {0.0, 1.0}
    assert ds.train.img.dtype == np.float32 and ds.img_dim == 12 and ds.txt_dim == 5
    assert ds.test.img_items[0] == "i60" and ds.test.txt_items[0] == "t60"
    tfidf = load_dataset(DataConfig(format="wikipedia", root=str(root), text_key="T_tfidf"))
    assert tfidf.txt_dim == 7


def test_real_wikipedia(wikipedia_root):
    ds = load_dataset(DataConfig(format="wikipedia", root=str(wikipedia_root)))
    assert len(ds.train) + len(ds.val) == 2173 and len(ds.test) == 693
    assert ds.img_dim == 128 and ds.txt_dim == 10 and ds.num_classes == 10
    assert abs(len(ds.val) - 217) <= 1
    # Stratified: every class appears in validation.
    assert (ds.val.labels.sum(0) > 0).all()


@pytest.mark.parametrize("kind, match", [("nan", "NaN"), ("bad_cat", "out of range")])
def test_wikipedia_errors_name_the_file(tmp_path, kind, match):
    root = write_wikipedia(tmp_path / "w", **{kind: True})
    with pytest.raises(DataError, match=match) as exc:
        load_dataset(DataConfig(format="wikipedia", root=str(root)))
    assert "raw_features.mat" in str(exc.value)


def test_wikipedia_missing_key_and_dims(tmp_path):
    root = write_wikipedia(tmp_path / "w")
    with pytest.raises(DataError, match="T_bow_tr"):
        load_dataset(DataConfig(format="wikipedia", root=str(root), text_key="T_bow"))
    with pytest.raises(DataError, match="dimension 12, config expects 128"):
        load_dataset(DataConfig(format="wikipedia", root=str(root), img_dim=128))


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(DataError, match="data not found"):
        load_dataset(DataConfig(format="wikipedia", root=str(tmp_path / "nope")))


def test_dscmr_release_layout(tmp_path):
    img, txt, lab = make_clustered_features(50, 4, img_dim=6, txt_dim=3)
    for split, sl in (("train", slice(0, 40)), ("test", slice(40, 50))):
        savemat(tmp_path / f"{split}_img.mat", {f"{split}_img": img[sl]})
        savemat(tmp_path / f"{split}_txt.mat", {f"{split}_txt": txt[sl]})
        savemat(tmp_path / f"{split}_img_lab.mat", {f"{split}_img_lab": (lab[sl] + 1).reshape(-1, 1)})
    ds = load_dataset(DataConfig(format="dscmr", root=str(tmp_path), val_fraction=0.25))
    assert ds.num_classes == 4  # 1-based ids detected
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 10)
    np.testing.assert_array_equal(ds.test.labels.argmax(1), lab[40:])


def test_dscmr_release_multi_hot_and_row_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 8)):
        savemat(tmp_path / f"{split}_img.mat", {f"{split}_img": rng.normal(size=(n, 4))})
        savemat(tmp_path / f"{split}_txt.mat", {f"{split}_txt": rng.normal(size=(n + (split == "test"), 3))})
        savemat(tmp_path / f"{split}_img_lab.mat", {f"{split}_img_lab": (rng.random((n, 5)) < 0.4).astype(float)})
    with pytest.raises(DataError, match="row counts disagree"):
        load_dataset(DataConfig(format="dscmr", root=str(tmp_path)))


def test_npz_with_own_val_split(tiny_npz):
    ds = load_dataset(DataConfig(format="npz", root=str(tiny_npz)))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (160, 30, 50)


def test_npz_carves_val_and_accepts_multi_hot(tmp_path):
    img, txt, lab = make_clustered_features(100, 3)
    multi = np.eye(3)[lab]
    multi[0, 1] = 1
    split = np.array(["train"] * 80 + ["test"] * 20)
    p = tmp_path / "m.npz"
    np.savez(p, img=img, txt=txt, labels=multi, split=split)
    ds = load_dataset(DataConfig(format="npz", root=str(p), val_fraction=0.1))
    assert (len(ds.train), len(ds.val)) == (72, 8)
    assert ds.num_classes == 3


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.update(split=np.array(["train"] * 200 + ["tst"] * 40)), "unknown split"),
        (lambda a: a.update(labels=np.r_[a["labels"][:-1], [-1]]), "out of range"),
        (lambda a: a.update(txt=a["txt"][:-1]), "row counts disagree"),
        (lambda a: a.pop("txt"), "missing array"),
        (lambda a: a["txt"].__setitem__((5, 0), np.inf), "NaN or Inf"),
    ],
)
def test_npz_errors(tmp_path, tiny_npz, mutate, match):
    with np.load(tiny_npz) as z:
        arrays = {k: z[k] for k in z.files}
    mutate(arrays)
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=match) as exc:
        load_dataset(DataConfig(format="npz", root=str(p)))
    assert "bad.npz" in str(exc.value)


def test_corrupt_npz(tmp_path):
    p = tmp_path / "broken.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        load_dataset(DataConfig(format="npz", root=str(p)))


def test_unknown_format(tmp_path):
    with pytest.raises(DataError, match="unknown data.format"):
        load_dataset(DataConfig(format="parquet", root=str(tmp_path)))


def test_to_multi_hot():
    np.testing.assert_array_equal(to_multi_hot(np.array([0, 2]), 3, source="x"), [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(
        to_multi_hot(np.array([[1], [3]]), 3, source="x", one_based=True), [[1, 0, 0], [0, 0, 1]]
    )
    with pytest.raises(DataError, match="integers"):
        to_multi_hot(np.array([0.5]), 3, source="x")
    with pytest.raises(DataError, match="columns"):
        to_multi_hot(np.ones((2, 4)), 3, source="x")


def test_validation_split_is_stratified_and_seeded():
    img, txt, lab = make_clustered_features(200, 4, seed=3)
    sp = Split(img, txt, np.eye(4, dtype=np.float32)[lab])
    tr1, va1 = carve_validation(sp, fraction=0.1, seed=7)
    tr2, va2 = carve_validation(sp, fraction=0.1, seed=7)
    _, va3 = carve_validation(sp, fraction=0.1, seed=8)
    assert len(va1) == 20 and len(tr1) == 180
    np.testing.assert_array_equal(va1.img, va2.img)
    assert not np.array_equal(va1.img, va3.img)
    counts = va1.labels.sum(0)
    expected = sp.labels.sum(0) * 0.1
    assert np.all(np.abs(counts - expected) <= 1)


def test_validation_by_groups_keeps_groups_whole_and_one_row_groups_split_as_rows():
    img, txt, lab = make_clustered_features(200, 4, seed=3)
    sp = Split(img, txt, np.eye(4, dtype=np.float32)[lab])
    by_rows = carve_validation(sp, fraction=0.1, seed=7)
    by_singletons = carve_validation(sp, fraction=0.1, seed=7, groups=[f"row{i}" for i in range(200)])
    for a, b in zip(by_rows, by_singletons, strict=True):  # one row per group: the row-wise split, unchanged
        np.testing.assert_array_equal(a.img, b.img)
    groups = [f"image{i // 4}" for i in range(200)]  # 50 groups of 4 consecutive rows
    tr, va = carve_validation(sp, fraction=0.1, seed=7, groups=groups)
    row_of = {tuple(r): i for i, r in enumerate(img)}
    val_groups = {groups[row_of[tuple(r)]] for r in va.img}
    train_groups = {groups[row_of[tuple(r)]] for r in tr.img}
    assert len(val_groups) == 5 and len(va) == 20 and not val_groups & train_groups
