"""Search defaults sized from the bundle (recall without flags) and memory-mapped bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dscmr.errors import IndexBundleError
from dscmr.indexing.build import BuildSpec, add_to_bundle, build_bundle
from dscmr.indexing.bundle import IndexBundle, load_bundle
from dscmr.indexing.hybrid import hybrid_search
from dscmr.indexing.manifest import MANIFEST, Manifest, default_nprobe, default_shortlist, search_defaults

SHA = "ab" * 32
N, NQ, D = 20_000, 200, 128


def _recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(
        np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(found, truth, strict=True)])
    )


def _exact(xb: np.ndarray, xq: np.ndarray, k: int = 10) -> np.ndarray:
    nb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    nq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    return np.argsort(-(nq @ nb.T), axis=1, kind="stable")[:, :k]


def _build(out: Path, xb: np.ndarray, spec: BuildSpec) -> IndexBundle:
    items = [f"i{i}" for i in range(xb.shape[0])]
    return build_bundle(
        out, xb, modality="image", items=items, kind="id", run_info={"checkpoint_sha256": SHA}, spec=spec
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    from dscmr.benchmarks.search import clustered_embeddings

    x = clustered_embeddings(N + NQ, D, seed=5)
    return x[:N], x[N:]


@pytest.fixture(scope="module")
def ivf_bundle(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> Path:
    out = tmp_path_factory.mktemp("scale") / "b"
    _build(out, data[0], BuildSpec(float_factory="IVF256,Flat", binary="itq", bits=64)).close()
    return out


def test_rule_grows_with_count_and_falls_with_bits() -> None:
    assert default_shortlist(1_000, 64) == 100  # never below 10 * k
    assert default_shortlist(1_000_000, 64) > default_shortlist(1_000_000, 128) > 10 * 10
    assert 7000 <= default_shortlist(1_000_000, 64) <= 9000  # the measured 8000 for 0.98 at 1M
    assert default_shortlist(50, 64, k=10) == 50  # capped at the count
    assert default_nprobe(1024) == 8 and default_nprobe(4096) == 32 and default_nprobe(4) == 4


def test_default_search_reaches_recall(ivf_bundle: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    xb, xq = data
    truth = _exact(xb, xq)
    b = load_bundle(ivf_bundle)
    m = json.loads((ivf_bundle / MANIFEST).read_text())
    assert m["search"] == {"rule": "v1", "shortlist": default_shortlist(N, 64), "nprobe": default_nprobe(256)}
    assert b.float_index is not None and b.float_index.params["nprobe"] == default_nprobe(256)
    assert _recall(b.float_index.search(xq, 10)[1], truth) >= 0.95
    assert b.binary_index is not None and b.hasher is not None and b.vectors is not None
    kp = b.shortlist_for(10)
    assert kp == default_shortlist(N, 64) and b.shortlist_for(20) == 2 * kp
    _, ids = hybrid_search(b.binary_index, b.vectors, b.hasher.encode(xq), xq, 10, shortlist=kp)
    assert _recall(ids, truth) >= 0.95
    b.close()


def test_mmap_and_ram_give_the_same_results(ivf_bundle: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    xq = data[1][:50]
    mapped, ram = load_bundle(ivf_bundle, mmap=True), load_bundle(ivf_bundle, mmap=False)
    assert mapped.float_index is not None and ram.float_index is not None
    assert mapped.float_index.mapped_from is not None and ram.float_index.mapped_from is None
    assert mapped.binary_index is not None and mapped.binary_index.mapped_from is not None
    assert isinstance(mapped.vectors, np.memmap) and not isinstance(ram.vectors, np.memmap)
    for a, b in zip(mapped.float_index.search(xq, 10), ram.float_index.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    codes = ram.hasher.encode(xq)  # type: ignore[union-attr]
    for a, b in zip(mapped.binary_index.search(codes, 10), ram.binary_index.search(codes, 10), strict=True):  # type: ignore[union-attr]
        np.testing.assert_array_equal(a, b)
    h1 = hybrid_search(mapped.binary_index, mapped.vectors, codes, xq, 10, shortlist=mapped.shortlist_for(10))
    h2 = hybrid_search(ram.binary_index, ram.vectors, codes, xq, 10, shortlist=ram.shortlist_for(10))  # type: ignore[arg-type]
    np.testing.assert_array_equal(h1[1], h2[1])
    np.testing.assert_array_equal(h1[0], h2[0])
    mapped.close()
    ram.close()


def test_add_recomputes_defaults_and_a_mapped_reader_survives_the_swap(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    xb, xq = data[0][:3000], data[1][:20]
    out = tmp_path / "b"
    _build(out, xb[:2000], BuildSpec(float_factory="Flat", binary="itq", bits=16)).close()
    reader = load_bundle(out)  # memory-mapped
    before = reader.float_index.search(xq, 5)  # type: ignore[union-attr]
    first = Manifest.from_dict(json.loads((out / MANIFEST).read_text())).search
    new = add_to_bundle(out, xb[2000:], items=[f"j{i}" for i in range(1000)], checkpoint_sha256=SHA)
    assert new.count == 3000
    assert first is not None and first.shortlist == default_shortlist(2000, 16)
    assert new.manifest.search is not None and new.manifest.search.shortlist == default_shortlist(3000, 16)
    assert new.manifest.search.shortlist > first.shortlist
    again = reader.float_index.search(xq, 5)  # type: ignore[union-attr]  # the old, renamed files stay mapped
    np.testing.assert_array_equal(before[1], again[1])
    assert float(np.asarray(reader.vectors)[1999].sum()) != 0.0
    reader.close()
    new.close()


def test_manifest_without_search_falls_back_to_the_rule(ivf_bundle: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(ivf_bundle, old)
    m = json.loads((old / MANIFEST).read_text())
    del m["search"]
    (old / MANIFEST).write_text(json.dumps(m))
    b = load_bundle(old)
    assert b.manifest.search is None
    assert b.manifest.search_defaults() == search_defaults(N, bits=64, float_factory="IVF256,Flat")
    assert b.float_index is not None and b.float_index.params["nprobe"] == default_nprobe(256)
    b.close()
    m["search"] = {"rule": "v1", "shortlist": "many"}
    (old / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexBundleError, match="search.shortlist"):
        load_bundle(old)
