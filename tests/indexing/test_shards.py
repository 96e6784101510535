"""Sharded bundles: equal to the single-process build, add to the smallest shard, errors, Ray, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from dscmr.errors import IndexBundleError, UsageError
from dscmr.indexing.build import BuildSpec, add_to_bundle, build_bundle
from dscmr.indexing.bundle import IndexBundle, load_bundle
from dscmr.indexing.hybrid import hybrid_search
from dscmr.indexing.manifest import Manifest
from dscmr.indexing.sharded_index import IdMap, ShardedBinaryIndex, ShardedFloatIndex, merge_hamming, merge_topk
from dscmr.indexing.shards import build_sharded_bundle, shard_bounds

SHA = "0" * 64
N = 2000

SPECS = {
    "Flat": BuildSpec(float_factory="Flat"),
    "IVF": BuildSpec(float_factory="IVF16,Flat", float_params=(("nprobe", 3.0),)),
    "IVF-PQ": BuildSpec(float_factory="IVF16,PQ8x4"),
    "BFlat-itq": BuildSpec(float_factory=None, binary="itq", bits=32),
    "Flat+BFlat-sign": BuildSpec(float_factory="Flat", binary="sign", bits=16),  # 16 bits: many Hamming ties
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    faiss.omp_set_num_threads(1)


def _kw(n: int) -> dict:
    return {
        "modality": "image",
        "items": [f"item{i}" for i in range(n)],
        "kind": "id",
        "run_info": {"checkpoint_sha256": SHA},
    }


def _same_up_to_last_tie(Da: np.ndarray, Ia: np.ndarray, Db: np.ndarray, Ib: np.ndarray) -> None:
    """The same distances; the same ids except among those tied at the k-th distance."""
    np.testing.assert_array_equal(Da, Db)
    before = Da != Da[:, -1:]  # results strictly better than the k-th
    np.testing.assert_array_equal(np.where(before, Ia, -1), np.where(before, Ib, -1))


def _same(a: IndexBundle, b: IndexBundle, xq: np.ndarray, k: int = 25, *, ties_exact: bool = True) -> None:
    """Every metric of ``a`` and ``b`` gives the same ids and distances (``ties_exact=False``: up to the ids tied
    at the k-th distance, which an approximate index keeps in scan order)."""
    if a.float_index is not None:
        assert b.float_index is not None
        Da, Ia = a.float_index.search(xq, k)
        Db, Ib = b.float_index.search(xq, k)
        if ties_exact:
            np.testing.assert_array_equal(Ia, Ib)
        _same_up_to_last_tie(Da, Ia, Db, Ib)
    if a.binary_index is not None:
        assert b.binary_index is not None and a.hasher is not None and b.hasher is not None
        codes = a.hasher.encode(xq)
        np.testing.assert_array_equal(codes, b.hasher.encode(xq))
        Da, Ia = a.binary_index.search(codes, k)
        Db, Ib = b.binary_index.search(codes, k)
        np.testing.assert_array_equal(Ia, Ib)
        np.testing.assert_array_equal(Da, Db)
        assert a.vectors is not None and b.vectors is not None
        ha = hybrid_search(a.binary_index, a.vectors, codes, xq, 10, shortlist=60)
        hb = hybrid_search(b.binary_index, b.vectors, codes, xq, 10, shortlist=60)
        np.testing.assert_array_equal(ha[1], hb[1])
        np.testing.assert_array_equal(ha[0], hb[0])


@pytest.mark.parametrize("name", list(SPECS))
def test_sharded_equals_single_build(name: str, clustered: np.ndarray, tmp_path: Path) -> None:
    xb, xq = clustered[:N], clustered[N:]
    spec = SPECS[name]
    single = build_bundle(tmp_path / "one", xb, spec=spec, **_kw(N))
    sharded = build_sharded_bundle(tmp_path / "three", xb, shards=3, spec=spec, **_kw(N))
    assert sharded.manifest.format_version == 2 and [s.count for s in sharded.manifest.shards or ()] == [666, 667, 667]
    assert isinstance(sharded.float_index or sharded.binary_index, ShardedFloatIndex | ShardedBinaryIndex)
    if spec.float_factory and spec.float_factory.startswith("IVF"):
        assert sharded.manifest.search_defaults().nprobe == single.manifest.search_defaults().nprobe
    ties_exact = name != "IVF-PQ"  # 4-bit PQ codes tie often
    _same(single, sharded, xq, ties_exact=ties_exact)
    assert sharded.items([0, 1999, 700]) == single.items([0, 1999, 700])
    again = load_bundle(tmp_path / "three", verify=True, mmap=False)  # every shard's SHA-256, read into RAM
    _same(single, again, xq, ties_exact=ties_exact)


def test_ivf_sharded_equals_single_at_every_nprobe(clustered: np.ndarray, tmp_path: Path) -> None:
    xb, xq = clustered[:N], clustered[N:]
    spec = SPECS["IVF"]
    single = build_bundle(tmp_path / "one", xb, spec=spec, **_kw(N))
    sharded = build_sharded_bundle(tmp_path / "four", xb, shards=4, spec=spec, **_kw(N))
    for nprobe in (1, 5, 16):
        for b in (single, sharded):
            assert b.float_index is not None
            b.float_index.set_params(nprobe=nprobe)
        _same(single, sharded, xq, k=40)


def test_add_goes_to_the_smallest_shard_and_equals_a_build_of_the_union(clustered: np.ndarray, tmp_path: Path) -> None:
    xb, xq = clustered[:N], clustered[N:]
    spec = SPECS["Flat+BFlat-sign"]
    first, extra1, extra2 = xb[:1500], xb[1500:1700], xb[1700:]
    kw = _kw(N)
    names = kw.pop("items")
    out = tmp_path / "sharded"
    build_sharded_bundle(out, first, shards=3, spec=spec, items=names[:1500], hash_train=first, **kw)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    b = add_to_bundle(out, extra1, items=names[1500:1700], checkpoint_sha256=SHA, source={"split": "a"})
    assert [s.count for s in b.manifest.shards or ()] == [700, 500, 500]  # shard 0 (500, the first of equals)
    assert b.manifest.shards is not None and b.manifest.shards[0].ranges == ((0, 500), (1500, 200))
    b = add_to_bundle(out, extra2, items=names[1700:], checkpoint_sha256=SHA, source={"split": "b"})
    assert [s.count for s in b.manifest.shards or ()] == [700, 800, 500]
    assert b.manifest.shards is not None and b.manifest.shards[1].ranges == ((500, 500), (1700, 300))
    union = build_bundle(tmp_path / "union", xb, spec=spec, items=names, hash_train=first, **kw)
    _same(union, load_bundle(out, verify=True), xq, k=40)
    assert b.items([1999, 1600]) == union.items([1999, 1600])
    assert not (out / "float-00002.faiss").samefile(tmp_path / "union" / "float.faiss")
    assert before["float-00002.faiss"] == (out / "float-00002.faiss").read_bytes()  # untouched shards kept


def test_a_failing_shard_leaves_nothing_half_written(
    clustered: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dscmr.indexing.shards as shards_mod

    real = shards_mod.fill_shard
    calls = []

    def flaky(job):
        calls.append(job.index)
        if job.index == 1:
            raise OSError("disk full")
        return real(job)

    monkeypatch.setattr(shards_mod, "fill_shard", flaky)
    with pytest.raises(OSError, match="disk full"):
        build_sharded_bundle(tmp_path / "out", clustered[:N], shards=3, spec=SPECS["Flat"], **_kw(N))
    assert calls == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock"]


@pytest.mark.parametrize("shards", [0, -2, N + 1, 2.5, True])
def test_bad_shard_counts_are_one_clear_error(shards: object, clustered: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--shards must be a whole number from 1 to the number of items"):
        build_sharded_bundle(tmp_path / "out", clustered[:N], shards=shards, spec=SPECS["Flat"], **_kw(N))  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_shard_bounds_and_id_maps() -> None:
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(3, 3) == [(0, 1), (1, 2), (2, 3)]
    m = IdMap([(0, 500), (1500, 200), (1900, 3)])
    local = np.array([[0, 499, 500, 699, 700, 702, -1]])
    np.testing.assert_array_equal(m.to_global(local), [[0, 499, 1500, 1699, 1900, 1902, -1]])


def test_hamming_merge_equals_the_general_merge() -> None:
    rng = np.random.default_rng(0)
    parts = []
    for s in range(4):  # per shard: (nq, k) distances with many ties, ids ascending within ties, some -1 pads
        D = np.sort(rng.integers(0, 6, (3, 50)), axis=1).astype(np.int32)
        I = s * 1000 + np.tile(np.arange(50), (3, 1))
        I[:, 45:] = np.where(rng.random((3, 5)) < 0.5, -1, I[:, 45:])
        parts.append((D, I.astype(np.int64)))
    for k in (1, 10, 50, 120):
        want = merge_topk(parts, k, descending=False)
        got = merge_hamming(parts, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(np.sort(merge_hamming(parts, k, ordered=False)[1]), np.sort(want[1]))


def test_manifest_refuses_shard_files_outside_the_layout(clustered: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "b"
    build_sharded_bundle(out, clustered[:N], shards=2, spec=SPECS["Flat"], **_kw(N))
    good = json.loads((out / "manifest.json").read_text())
    bad = json.loads(json.dumps(good))
    bad["shards"][0]["float"] = "../float-00000.faiss"
    with pytest.raises(IndexBundleError, match="float-NNNNN.faiss"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["files"]["../float-00009.faiss"] = bad["files"]["float-00000.faiss"]
    with pytest.raises(IndexBundleError, match="not a file of the bundle layout"):
        Manifest.from_dict(bad)
    for ranges in ([[0, 1000], [999, 1000]], [[0, 1000], [1000, 999]], [[0, 1000], [1001, 1000]]):
        bad = json.loads(json.dumps(good))
        bad["shards"][0]["ranges"], bad["shards"][1]["ranges"] = [ranges[0]], [ranges[1]]
        with pytest.raises(IndexBundleError, match="disjoint runs"):
            Manifest.from_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["format_version"] = 1
    with pytest.raises(IndexBundleError, match="exactly in format version 2"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(good))
    del bad["files"]["float-00001.faiss"]
    with pytest.raises(IndexBundleError, match="does not list float-00001.faiss"):
        Manifest.from_dict(bad)
    (out / "float-00001.faiss").unlink()
    with pytest.raises(IndexBundleError, match="float-00001.faiss is missing"):
        load_bundle(out)


def test_shards_on_two_ray_workers_equal_in_process(clustered: np.ndarray, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dscmr[distributed]')")
    import os

    from dscmr.indexing.shards import ArrayRows, build_sharded

    xb, xq = clustered[:N], clustered[N:]
    spec = BuildSpec(float_factory="IVF16,Flat", binary="itq", bits=32)
    local = build_sharded_bundle(tmp_path / "local", xb, shards=4, spec=spec, **_kw(N))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        done = build_sharded(tmp_path / "ray", ArrayRows(xb), shards=4, spec=spec, ray="local", hash_train=xb, **_kw(N))
    finally:
        ray.shutdown()
    assert done.mode == "ray" and [j.index for j in done.jobs] == [0, 1, 2, 3]
    assert os.getpid() not in {j.pid for j in done.jobs} and all(j.peak_rss_mb > 0 for j in done.jobs)
    _same(local, done.bundle, xq)


# ----------------------------------------------------------------------------------------------------------------
# CLI

runner = CliRunner()


def _run(*args: object):
    return runner.invoke(app(), [str(a) for a in args])


def app():
    from dscmr.cli.main import app as main_app

    return main_app


def _error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_cli_sharded_build_info_search_and_add(trained_run: Path, tmp_path: Path) -> None:
    out, one = tmp_path / "img", tmp_path / "one"
    common = ("--run", trained_run, "--modality", "image", "--binary", "itq", "--bits", "16", "--json")
    res = _run("index", "build", *common, "--out", out, "--shards", "3")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["shards"] == [16, 17, 17]
    assert _run("index", "build", *common, "--out", one).exit_code == 0
    res = _run("index", "info", "--bundle", out, "--verify")
    assert res.exit_code == 0 and "3 shards (16, 17, 17 items)" in res.stdout
    for metric in ("cosine", "hamming", "hybrid"):
        hits = []
        for bundle in (out, one):
            res = _run("search", "text", "--query-id", "190", "--run", trained_run, "--index", bundle, "-k", "8",
                       "--metric", metric, "--json")  # fmt: skip
            assert res.exit_code == 0, res.output
            hits.append(json.loads(res.stdout)["hits"])
        assert hits[0] == hits[1]
    res = _run("index", "add", "--bundle", out, "--run", trained_run, "--split", "val", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["shards"] == [46, 17, 17] and json.loads(res.stdout)["count"] == 80


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--shards", "0"), "--shards must be a whole number from 1"),
        (("--shards", "-3"), "--shards must be a whole number from 1"),
        (("--shards", "51"), "from 1 to the number of items (50), got 51"),
        (("--ray", "local"), "pass --shards N too"),
    ],
)
def test_cli_bad_shard_options_exit_2(trained_run: Path, tmp_path: Path, extra: tuple[str, ...], message: str) -> None:
    res = _run("index", "build", "--run", trained_run, "--modality", "image", "--out", tmp_path / "x", *extra)
    assert res.exit_code == 2 and message in _error_line(res)
    assert not (tmp_path / "x").exists()
