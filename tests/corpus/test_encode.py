"""``dscmr.corpus``: a raw corpus -> a features folder; resume after a kill; a 2-worker Ray run equals in-process."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dscmr.config import DataConfig
from dscmr.corpus import encode_corpus
from dscmr.data import load_dataset
from dscmr.data.features_dir import FeaturesDir
from dscmr.errors import DataError, UsageError
from tests.corpus.conftest import SHARD_SIZE


def _features(out: Path) -> dict[str, np.ndarray]:
    folder = FeaturesDir(out)
    manifest = folder.read_manifest()
    assert manifest is not None and manifest.complete
    return {kind: folder.read_features(manifest, kind) for kind in ("image", "text")}


def _features_cfg(out: Path) -> DataConfig:
    return DataConfig(format="features_dir", root=str(out))


def test_features_dir_dataset_equals_the_folder_loader(encoded: Path, data_cfg: DataConfig):
    got = load_dataset(_features_cfg(encoded))
    ref = load_dataset(data_cfg)
    assert got.class_names == ref.class_names and got.num_classes == ref.num_classes
    for name in ("train", "val", "test"):
        a, b = got.split(name), ref.split(name)
        assert len(a) == len(b) > 0
        assert a.img_items == b.img_items and a.txt_items == b.txt_items
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.img, b.img, atol=1e-5)
        np.testing.assert_allclose(a.txt, b.txt, atol=1e-5)


def test_manifest_describes_the_encoding(encoded: Path, data_cfg: DataConfig):
    manifest = FeaturesDir(encoded).read_manifest()
    assert manifest is not None
    assert (manifest.n_records, manifest.n_images, manifest.n_texts) == (16, 12, 16)
    assert [s.kind for s in manifest.shards] == ["image"] * 3 + ["text"] * 4
    assert manifest.image_encoder["backbone"] == data_cfg.image_backbone
    assert manifest.image_encoder["preprocess"]["crop"] == f"center-{data_cfg.image_size}"
    assert len(manifest.image_encoder["weights_sha256"]) == 64 and manifest.text_encoder["weights_sha256"]
    assert (manifest.image_dim, manifest.text_dim) == (1280, 384)
    assert all(s.done for s in manifest.shards)
    assert not list(encoded.rglob("*.tmp"))


class _Killed(Exception):
    """Stands in for a kill: raised from the on_shard hook after some shards are written."""


def test_rerun_after_a_kill_recomputes_only_unfinished_shards(encoded, data_cfg, make_encoder, tmp_path):
    out = tmp_path / "features"
    seen: list[tuple[str, int]] = []

    def kill_after_three(entry) -> None:
        seen.append((entry.kind, entry.index))
        if len(seen) == 3:
            raise _Killed

    with pytest.raises(_Killed):
        encode_corpus(data_cfg, out, shard_size=SHARD_SIZE, on_shard=kill_after_three)
    manifest = FeaturesDir(out).read_manifest()
    assert manifest is not None and not manifest.complete and manifest.shards_done == 3
    with pytest.raises(DataError, match="unfinished"):
        load_dataset(_features_cfg(out))

    # a kill in the middle of an atomic write leaves its temporary file: the rerun removes ours, nothing else
    for name in (".manifest.json.k1ll3d.tmp", ".images.jsonl.k1ll3d.tmp", "shards/.text-00003.npy.k1ll3d.tmp"):
        (out / name).write_bytes(b"half")
    (out / ".notes.k1ll3d.tmp").write_bytes(b"a user's file")
    encoder = make_encoder(out)
    result = encode_corpus(data_cfg, out, shard_size=SHARD_SIZE, encoder=encoder)
    all_shards = [("image", i) for i in range(3)] + [("text", i) for i in range(4)]
    assert encoder.encoded == [s for s in all_shards if s not in seen]
    assert (result.computed, result.reused) == (4, 3)
    assert [p.name for p in out.rglob("*.tmp")] == [".notes.k1ll3d.tmp"]
    for kind, arr in _features(out).items():
        np.testing.assert_array_equal(arr, _features(encoded)[kind])


def test_a_real_kill_then_rerun_recomputes_only_unfinished_shards(
    config_file, encoded, data_cfg, make_encoder, tmp_path
):
    """SIGKILL a `dscmr encode` process once it has finished two shards; the rerun does only the rest."""
    out = tmp_path / "features"
    cmd = [sys.executable, "-m", "dscmr.cli.main", "encode", "--config", str(config_file), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--shard-size", "1", "--threads", "1"], stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            manifest = FeaturesDir(out).read_manifest() if (out / "manifest.json").is_file() else None
            if manifest is not None and manifest.shards_done >= 2:
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    manifest = FeaturesDir(out).read_manifest()
    assert manifest is not None
    if manifest.complete:
        pytest.skip("the encode process finished before it could be killed")
    unfinished = [(s.kind, s.index) for s in manifest.shards if not s.done]
    encoder = make_encoder(out)
    result = encode_corpus(data_cfg, out, shard_size=1, encoder=encoder)
    assert encoder.encoded == unfinished and result.computed == len(unfinished) < 28
    assert not list(out.rglob("*.tmp"))
    for kind, arr in _features(out).items():  # row by row the same features as shards of 5 rows
        np.testing.assert_allclose(arr, _features(encoded)[kind], atol=1e-5)


def test_a_second_encode_into_a_folder_being_written_stops_at_once(config_file, encoded, tmp_path):
    """A real `dscmr encode` is frozen (SIGSTOP) mid-way; a second one into the same --out stops with one line and
    touches nothing; the first, resumed, finishes the folder whole and right."""
    out = tmp_path / "features"
    cmd = [sys.executable, "-m", "dscmr.cli.main", "encode", "--config", str(config_file), "--out", str(out)]
    cmd += ["--shard-size", "1", "--threads", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while first.poll() is None and not (out / "manifest.json").is_file():
            time.sleep(0.01)  # the manifest is first written with the lock held
        first.send_signal(signal.SIGSTOP)
        before = FeaturesDir(out).read_manifest()
        if before is None or before.complete:
            pytest.skip("the first encode finished before it could be frozen")
        files = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == files  # nothing touched
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is being written by another dscmr encode" in lines[0], second.stderr
    for kind, arr in _features(out).items():
        np.testing.assert_allclose(arr, _features(encoded)[kind], atol=1e-5)
    assert not list(out.rglob("*.tmp"))


def test_the_writer_lock_is_exclusive_and_released(tmp_path):
    from dscmr.utils.locks import sibling_lock_path, try_exclusive

    out = tmp_path / "sub" / "features"
    with try_exclusive(out) as mine:
        assert mine and sibling_lock_path(out) == tmp_path / "sub" / ".features.lock"
        with try_exclusive(out) as again:  # another descriptor, even in this process
            assert not again
    with try_exclusive(out) as mine:
        assert mine  # released on leaving the block
    with try_exclusive(out) as mine:
        assert mine
        with pytest.raises(UsageError, match="being written by another dscmr encode"):
            encode_corpus(DataConfig(), out)
    assert not out.exists()  # refused before anything was written


def test_rerun_recomputes_a_missing_or_changed_shard_and_nothing_else(encoded_copy, data_cfg, make_encoder):
    (encoded_copy / "shards" / "image-00001.npy").unlink()
    text_shard = encoded_copy / "shards" / "text-00002.npy"
    text_shard.write_bytes(text_shard.read_bytes()[:-8])  # truncated
    encoder = make_encoder(encoded_copy)
    result = encode_corpus(data_cfg, encoded_copy, shard_size=SHARD_SIZE, encoder=encoder)
    assert encoder.encoded == [("image", 1), ("text", 2)]
    assert result.computed == 2 and result.reused == 5
    load_dataset(_features_cfg(encoded_copy))  # verifies every file again


def test_a_changed_caption_recomputes_only_its_text_shard(corpus_root, data_cfg, make_encoder, encoded, tmp_path):
    root = Path(shutil.copytree(corpus_root, tmp_path / "data"))
    lines = (root / "captions.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    rec["text"] = "an entirely new caption"
    (root / "captions.jsonl").write_text("\n".join([*lines[:-1], json.dumps(rec)]) + "\n")
    out = Path(shutil.copytree(encoded, tmp_path / "features"))
    encoder = make_encoder(out)
    encode_corpus(data_cfg, out, data_root=root, shard_size=SHARD_SIZE, encoder=encoder)
    assert encoder.encoded == [("text", 3)]  # the last text is in the last shard
    texts = load_dataset(_features_cfg(out)).split(rec["split"]).txt_items
    assert texts is not None and "an entirely new caption" in texts


def test_another_shard_size_re_encodes_and_removes_stale_shards(encoded, encoded_copy, data_cfg):
    result = encode_corpus(data_cfg, encoded_copy, shard_size=8)
    assert result.computed == result.shards == 4
    assert sorted(p.name for p in (encoded_copy / "shards").iterdir()) == [
        "image-00000.npy",
        "image-00001.npy",
        "text-00000.npy",
        "text-00001.npy",
    ]
    for kind, arr in _features(encoded_copy).items():
        np.testing.assert_allclose(arr, _features(encoded)[kind], atol=1e-5)


def test_out_holding_something_else_is_refused(data_cfg, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        encode_corpus(data_cfg, tmp_path, shard_size=SHARD_SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_with_a_corrupt_manifest_is_refused(encoded_copy, data_cfg):
    (encoded_copy / "manifest.json").write_text("{oops")
    with pytest.raises(UsageError, match="cannot be resumed"):
        encode_corpus(data_cfg, encoded_copy, shard_size=SHARD_SIZE)


def test_feature_formats_cannot_be_encoded(tmp_path):
    with pytest.raises(UsageError, match="raw datasets"):
        encode_corpus(DataConfig(format="npz", root=str(tmp_path)), tmp_path / "out")
    with pytest.raises(UsageError, match="shard-size"):
        encode_corpus(DataConfig(format="folder"), tmp_path / "out", shard_size=0)


def test_ray_missing_is_a_usage_error_before_any_work(monkeypatch, data_cfg, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(UsageError, match=r"dscmr\[distributed\]"):
        encode_corpus(data_cfg, tmp_path / "out", ray="local")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address, message", [("127.0.0.1:1", "cannot reach a Ray cluster"), ("no-port", "HOST:PORT")])
def test_bad_ray_address_is_a_usage_error_before_any_work(data_cfg, tmp_path, address, message):
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'dscmr[distributed]')")
    with pytest.raises(UsageError, match=message):
        encode_corpus(data_cfg, tmp_path / "out", ray=address)
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own DataContext deprecations
def test_two_ray_workers_equal_in_process(encoded, data_cfg, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dscmr[distributed]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'dscmr[distributed]')")
    out = tmp_path / "features"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = encode_corpus(data_cfg, out, shard_size=SHARD_SIZE, ray="local", workers=2)
        for name in ("image-00002.npy", "text-00000.npy"):
            (out / "shards" / name).unlink()
        again = encode_corpus(data_cfg, out, shard_size=SHARD_SIZE, ray="local", workers=2)
    finally:
        ray.shutdown()
    assert (result.mode, result.workers, result.threads, result.computed) == ("ray", 2, 1, 7)
    assert (again.computed, again.reused, again.images_encoded, again.texts_encoded) == (2, 5, 2, 5)
    ray_feats, local_feats = _features(out), _features(encoded)
    for kind in ("image", "text"):
        assert ray_feats[kind].shape == local_feats[kind].shape
        assert float(np.abs(ray_feats[kind] - local_feats[kind]).max()) <= 1e-5
    assert (out / "images.jsonl").read_bytes() == (encoded / "images.jsonl").read_bytes()
    assert (out / "records.jsonl").read_bytes() == (encoded / "records.jsonl").read_bytes()
