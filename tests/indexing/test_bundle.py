"""Bundles on disk: build/load/add round-trip, manifest checks, atomic builds and the retriever."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dscmr.indexing.build as build_mod
from dscmr.errors import IndexBundleError, QueryError
from dscmr.indexing import BuildSpec, Retriever, add_from_run, build_from_run, load_bundle
from dscmr.indexing.bundle import FLOAT_FILE, MANIFEST, VECTORS_FILE
from dscmr.train import load_run


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporary or backup folders beside bundles (the writer-lock files stay by design)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_build_load_add_round_trip(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    spec = BuildSpec(float_factory="Flat", binary="itq", bits=16)
    b = build_from_run(trained_run, out, modality="image", split="test", spec=spec)
    assert b.count == 50 and b.dim == 16 and b.metrics == ("cosine", "hamming", "hybrid")
    m = json.loads((out / MANIFEST).read_text())
    assert m["format_version"] == 1 and m["modality"] == "image" and m["count"] == 50
    assert m["run"]["checkpoint_sha256"] == load_run(trained_run).checkpoint_sha256
    assert m["float"]["factory"] == "Flat" and m["binary"]["bits"] == 16 and m["binary"]["factory"] == "BFlat"
    assert set(m["files"]) == {"float.faiss", "binary.faiss", "hasher.npz", "vectors.npy", "items.sqlite"}
    recs = b.all_items()
    assert [r.id for r in recs] == list(range(50)) and recs[0].labels is not None

    b2 = add_from_run(out, trained_run, split="val")
    assert b2.count == 80 and b2.float_index.ntotal == 80 and b2.binary_index.ntotal == 80
    assert b2.vectors.shape == (80, 16) and len(b2.all_items()) == 80
    assert [s.split for s in b2.manifest.sources] == ["test", "val"]
    assert [(s.first_id, s.count) for s in b2.manifest.sources] == [(0, 50), (50, 30)]
    assert b2.manifest.float is not None and b2.manifest.float.ntotal == 80
    with pytest.raises(IndexBundleError, match="already holds"):
        add_from_run(out, trained_run, split="val")
    assert _leftovers(tmp_path) == []

    # an item of the added split is its own nearest neighbour by cosine after the add
    reloaded = load_bundle(out, verify=True)
    v = np.asarray(reloaded.vectors[60:61])
    _, I = reloaded.float_index.search(v, 1)
    assert I[0, 0] == 60


def test_retriever_metrics_and_batching(trained_run: Path, tmp_path: Path) -> None:
    build_from_run(trained_run, tmp_path / "b", modality="image", spec=BuildSpec(binary="sign", bits=16))
    r = Retriever(trained_run, tmp_path / "b")
    assert r.query_modality == "text"
    ds = r.dataset()
    ids = list(ds.test.txt_items[:3])
    cos = r.search_ids(ids, k=5, metric="cosine")
    assert len(cos) == 3 and all(len(h) == 5 for h in cos)
    assert [h.rank for h in cos[0]] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(cos[0], cos[0][1:], strict=False))
    ham = r.search_ids(ids, k=5, metric="hamming")
    assert all(isinstance(h.score, int) for h in ham[0])
    # hybrid with the whole database as shortlist equals exact cosine
    hyb = r.search_ids(ids, k=5, metric="hybrid", shortlist=50)
    assert [[h.id for h in q] for q in hyb] == [[h.id for h in q] for q in cos]
    # batched == one at a time
    single = [r.search_ids([i], k=5, metric="cosine")[0] for i in ids]
    assert [[h.id for h in q] for q in single] == [[h.id for h in q] for q in cos]
    with pytest.raises(QueryError, match="precomputed features"):
        r.search_texts(["a cat"], k=3)
    with pytest.raises(QueryError, match="no text item"):
        r.search_ids(["nope"], k=3)
    with pytest.raises(QueryError, match="k must"):
        r.search_ids(ids, k=0)


def test_float_only_bundle_rejects_hamming(trained_run: Path, tmp_path: Path) -> None:
    build_from_run(trained_run, tmp_path / "b", modality="text")
    r = Retriever(trained_run, tmp_path / "b")
    with pytest.raises(QueryError, match="cannot answer --metric hamming"):
        r.search_ids([r.dataset().test.img_items[0]], k=3, metric="hamming")


def _edit_manifest(path: Path, **changes) -> None:
    m = json.loads((path / MANIFEST).read_text())
    m.update(changes)
    (path / MANIFEST).write_text(json.dumps(m))


def test_manifest_mismatches_raise(trained_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "b"
    build_from_run(trained_run, src, modality="image", spec=BuildSpec(binary="itq", bits=16))
    sha = load_run(trained_run).checkpoint_sha256
    import shutil

    cases = {
        "version": ({"format_version": 99}, "format version 99"),
        "model": ({"run": {"checkpoint_sha256": "0" * 64}}, "another model"),
        "dim": ({"dim": 17}, "dimension"),
        "ntotal": ({"count": 49}, "holds 50 items, the manifest says 49"),
    }
    for name, (changes, message) in cases.items():
        p = tmp_path / name
        shutil.copytree(src, p)
        _edit_manifest(p, **changes)
        with pytest.raises(IndexBundleError, match=message):
            load_bundle(p, checkpoint_sha256=sha)
    # a truncated index file
    p = tmp_path / "truncated"
    shutil.copytree(src, p)
    data = (p / FLOAT_FILE).read_bytes()
    (p / FLOAT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexBundleError, match="truncated"):
        load_bundle(p)
    # same size, corrupt content: caught by the manifest hashes with verify=True
    p = tmp_path / "corrupt"
    shutil.copytree(src, p)
    vec = bytearray((p / VECTORS_FILE).read_bytes())
    vec[-8:] = b"\x00" * 8 if vec[-8:] != b"\x00" * 8 else b"\x01" * 8
    (p / VECTORS_FILE).write_bytes(bytes(vec))
    with pytest.raises(IndexBundleError, match="SHA-256"):
        load_bundle(p, verify=True)
    with pytest.raises(IndexBundleError, match="not found"):
        load_bundle(tmp_path / "missing")


def test_failed_build_keeps_old_bundle_and_leaves_no_temp_dirs(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b"
    build_from_run(trained_run, out, modality="image")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("killed midway")

    monkeypatch.setattr(build_mod, "write_items", boom)  # fails after the index files were written
    with pytest.raises(RuntimeError, match="killed midway"):
        build_from_run(trained_run, out, modality="image", spec=BuildSpec(binary="sign", bits=16))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []
    assert load_bundle(out).count == 50
    # a first build that fails leaves nothing at all
    with pytest.raises(RuntimeError):
        build_from_run(trained_run, tmp_path / "new", modality="image")
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_interrupted_swap_is_rolled_back(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    build_from_run(trained_run, out, modality="image")
    # a kill between "old -> backup" and "new -> target" leaves only the backup and a stale temp folder
    out.rename(tmp_path / ".b.old-xyz")
    (tmp_path / ".b.tmp-999999999-abc").mkdir()
    assert load_bundle(out).count == 50
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_a_non_bundle(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keep.txt").write_text("x")
    with pytest.raises(IndexBundleError, match="not an index bundle"):
        build_from_run(trained_run, tmp_path / "docs", modality="image")
    assert (tmp_path / "docs" / "keep.txt").read_text() == "x"


def test_raw_queries_go_through_the_encoders_hook(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dscmr.encoders
    import dscmr.indexing.from_run

    build_from_run(trained_run, tmp_path / "b", modality="image")
    r = Retriever(trained_run, tmp_path / "b")
    row = r.dataset().test.txt[0]
    calls = []

    def fake_encode_queries(run, *, texts=None, image_paths=None):
        calls.append((texts, image_paths))
        return np.stack([row] * len(texts))

    monkeypatch.setattr(dscmr.indexing.from_run, "raw_formats", lambda: ("npz",))
    monkeypatch.setattr(dscmr.encoders, "encode_queries", fake_encode_queries)
    hits = r.search_texts(["a red car", "a dog"], k=3)
    assert calls == [(["a red car", "a dog"], None)]
    by_id = r.search_ids([r.dataset().test.txt_items[0]], k=3)[0]
    assert [h.id for h in hits[0]] == [h.id for h in by_id] == [h.id for h in hits[1]]


def test_binary_only_bundle_costs_code_bytes(trained_run: Path, tmp_path: Path) -> None:
    spec = BuildSpec(float_factory=None, binary="itq", bits=64, keep_vectors=False)
    b = build_from_run(trained_run, tmp_path / "b", modality="image", spec=spec)
    assert b.metrics == ("hamming",) and b.vectors is None and b.float_index is None
    assert b.binary_index.code_size == 8
    files = b.manifest.files
    assert set(files) == {"binary.faiss", "hasher.npz", "items.sqlite"}
    assert files["binary.faiss"].bytes - 50 * 8 < 200  # 8 bytes per item plus a small header
    assert add_from_run(tmp_path / "b", trained_run, split="val").count == 80


def _hold_lock_in_thread(target: Path):
    """Hold ``target``'s writer lock in another thread until the returned event is set."""
    import threading

    from dscmr.indexing.swap import writer_lock

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with writer_lock(target):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(30)
    return t, release


def test_reader_never_recovers_while_a_writer_is_alive(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    build_from_run(trained_run, out, modality="image")
    t, release = _hold_lock_in_thread(out)
    try:
        # the writer is between its two renames: only the backup exists
        out.rename(tmp_path / ".b.old-xyz")
        b = load_bundle(out)
        assert b.count == 50 and b.path == out and b.folder == tmp_path / ".b.old-xyz"
        assert len(b.all_items()) == 50
        assert not out.exists() and (tmp_path / ".b.old-xyz").is_dir()  # nothing was renamed
    finally:
        release.set()
        t.join()
    assert load_bundle(out).count == 50  # no writer now: the interrupted swap is rolled back
    assert out.is_dir() and _leftovers(tmp_path) == []


def test_writers_of_one_bundle_serialise(tmp_path: Path) -> None:
    import threading

    from dscmr.indexing.swap import writer_lock

    target = tmp_path / "b"
    t, release = _hold_lock_in_thread(target)
    entered = threading.Event()

    def second() -> None:
        with writer_lock(target):
            entered.set()

    t2 = threading.Thread(target=second)
    t2.start()
    assert not entered.wait(0.5)  # blocked while the first writer holds the lock
    release.set()
    t.join()
    assert entered.wait(30)
    t2.join()
