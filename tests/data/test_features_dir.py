"""``data.format = "features_dir"``: reading a features folder, and refusing bad, tampered or escaping ones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dscmr.config import DataConfig
from dscmr.data import load_dataset
from dscmr.data.features_dir import (
    FEATURES_DIR_VERSION,
    FeaturesDir,
    FeaturesManifest,
    ShardEntry,
)
from dscmr.errors import DataError

N = 10  # pairs, one image and one text each
SHARD = 4
SPLITS = ["train"] * 6 + ["val"] * 2 + ["test"] * 2


def write_features_dir(root: Path, *, nan_image: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A complete synthetic features folder (N pairs, 2 classes, shards of SHARD rows); returns (img, txt)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(N, 6)).astype(np.float32)
    txt = rng.normal(size=(N, 3)).astype(np.float32)
    if nan_image is not None:
        img[nan_image] = np.nan
    folder = FeaturesDir(root)
    records = [{"image": i, "text": i, "labels": [i % 2], "split": SPLITS[i]} for i in range(N)]
    files = {
        "images": folder.write_jsonl("images", [f"/photos/{i}.jpg" for i in range(N)]),
        "texts": folder.write_jsonl("texts", [f"caption {i}" for i in range(N)]),
        "records": folder.write_jsonl("records", records),
    }
    shards = []
    for kind, arr in (("image", img), ("text", txt)):
        for index, start in enumerate(range(0, N, SHARD)):
            stop = min(start + SHARD, N)
            entry = ShardEntry(kind, index, start, stop, "x", FeaturesDir.shard_file(kind, index))
            shards.append(folder.write_shard(entry, arr[start:stop]))
    manifest = FeaturesManifest(
        version=FEATURES_DIR_VERSION,
        complete=True,
        source="synthetic",
        n_records=N,
        n_images=N,
        n_texts=N,
        image_dim=6,
        text_dim=3,
        shard_size=SHARD,
        image_encoder={"kind": "image"},
        text_encoder={"kind": "text"},
        data_fingerprint="x",
        class_names=("even", "odd"),
        files=files,
        shards=tuple(shards),
    )
    folder.write_manifest(manifest)
    return img, txt


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(format="features_dir", root=str(root), **kw)


def _edit_manifest(root: Path, edit) -> None:
    data = json.loads((root / "manifest.json").read_text())
    edit(data)
    (root / "manifest.json").write_text(json.dumps(data))


def test_reads_splits_features_labels_and_items(tmp_path):
    img, txt = write_features_dir(tmp_path)
    ds = load_dataset(_cfg(tmp_path))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 2)
    assert ds.class_names == ("even", "odd") and (ds.img_dim, ds.txt_dim) == (6, 3)
    np.testing.assert_array_equal(ds.test.img, img[8:])
    np.testing.assert_array_equal(ds.test.txt, txt[8:])
    np.testing.assert_array_equal(ds.test.labels, [[1, 0], [0, 1]])
    assert ds.test.img_items == ("/photos/8.jpg", "/photos/9.jpg")
    assert ds.test.txt_items == ("caption 8", "caption 9")


def test_missing_folder_or_manifest_or_unfinished(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(_cfg(tmp_path / "nope"))
    with pytest.raises(DataError, match="no manifest.json"):
        load_dataset(_cfg(tmp_path))
    write_features_dir(tmp_path)
    _edit_manifest(tmp_path, lambda d: d.update(complete=False))
    with pytest.raises(DataError, match="unfinished"):
        load_dataset(_cfg(tmp_path))


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(version=99),
        lambda d: d.pop("shards"),
        lambda d: d.update(shards="many"),
        lambda d: d["shards"][0].update(start="0"),
        lambda d: d["shards"][0].update(kind="audio"),
        lambda d: d.update(n_images=-1),
    ],
    ids=["version", "no-shards", "shards-not-a-list", "start-a-string", "unknown-kind", "negative-count"],
)
def test_malformed_manifest(tmp_path, edit):
    write_features_dir(tmp_path)
    _edit_manifest(tmp_path, edit)
    with pytest.raises(DataError):
        load_dataset(_cfg(tmp_path))


def test_corrupt_manifest_json(tmp_path):
    write_features_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid features manifest"):
        load_dataset(_cfg(tmp_path))


@pytest.mark.parametrize("what", ["truncated", "flipped", "missing"])
def test_tampered_or_missing_shard(tmp_path, what):
    write_features_dir(tmp_path)
    shard = tmp_path / "shards" / "text-00001.npy"
    data = shard.read_bytes()
    if what == "truncated":
        shard.write_bytes(data[:-4])
    elif what == "flipped":
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        shard.unlink()
    with pytest.raises(DataError, match="text-00001.npy"):
        load_dataset(_cfg(tmp_path))


def test_tampered_records_file(tmp_path):
    write_features_dir(tmp_path)
    rec = tmp_path / "records.jsonl"
    rec.write_text(rec.read_text().replace('"split": "test"', '"split": "train"'))
    with pytest.raises(DataError, match="records.jsonl"):
        load_dataset(_cfg(tmp_path))


class _Trap:
    """Unpickling this writes a marker file: the reader must never do it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_a_pickled_shard_with_a_matching_hash_is_refused_never_unpickled(tmp_path):
    write_features_dir(tmp_path)
    marker = tmp_path / "UNPICKLED"
    shard = tmp_path / "shards" / "image-00000.npy"
    arr = np.empty((SHARD,), dtype=object)
    arr[:] = [_Trap(str(marker))] * SHARD
    np.save(shard, arr, allow_pickle=True)
    from dscmr.utils.io import file_sha256

    sha = file_sha256(shard)
    _edit_manifest(tmp_path, lambda d: d["shards"][0].update(sha256=sha))  # the attacker fixes the hash too
    with pytest.raises(DataError, match="image-00000.npy"):
        load_dataset(_cfg(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["../outside.npy", "/etc/passwd", "shards/../../outside.npy", "C:\\x.npy"])
def test_shard_paths_leaving_the_folder_are_refused(tmp_path, bad):
    root = tmp_path / "features"
    write_features_dir(root)
    (tmp_path / "outside.npy").write_bytes((root / "shards" / "image-00000.npy").read_bytes())
    _edit_manifest(root, lambda d: d["shards"][0].update(file=bad))
    with pytest.raises(DataError, match="inside the folder"):
        load_dataset(_cfg(root))


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    root = tmp_path / "features"
    write_features_dir(root)
    shard = root / "shards" / "image-00000.npy"
    outside = tmp_path / "outside.npy"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(DataError, match="links out"):
        load_dataset(_cfg(root))


def test_shard_of_the_wrong_shape(tmp_path):
    write_features_dir(tmp_path)
    folder = FeaturesDir(tmp_path)
    manifest = folder.read_manifest()
    assert manifest is not None
    entry = folder.write_shard(dataclasses.replace(manifest.shards[0], stop=3), np.zeros((3, 6), np.float32))
    _edit_manifest(tmp_path, lambda d: d["shards"][0].update(sha256=entry.sha256))
    with pytest.raises(DataError, match="expected \\(4, 6\\) float32"):
        load_dataset(_cfg(tmp_path))


def test_undecodable_images_fail_or_are_skipped(tmp_path):
    write_features_dir(tmp_path, nan_image=2)
    with pytest.raises(DataError, match="could not be decoded"):
        load_dataset(_cfg(tmp_path))
    ds = load_dataset(_cfg(tmp_path, skip_bad=True))
    assert len(ds.train) == 5 and "/photos/2.jpg" not in (ds.train.img_items or ())


def test_cli_prints_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from dscmr.cli.main import app

    write_features_dir(tmp_path / "features")
    shard = tmp_path / "features" / "shards" / "image-00002.npy"
    shard.write_bytes(shard.read_bytes()[:-4])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nformat = "features_dir"\nroot = "{tmp_path / "features"}"\n[train]\nepochs = 1\n')
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "image-00002.npy" in lines[0]
