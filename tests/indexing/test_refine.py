"""A lossy float index (IVF-PQ) stored with its vectors re-ranks its own shortlist by exact cosine (``refine``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dscmr.errors import QueryError
from dscmr.indexing.build import BuildSpec, build_bundle
from dscmr.indexing.bundle import IndexBundle, load_bundle
from dscmr.indexing.from_run import build_from_run
from dscmr.indexing.hybrid import refine_search
from dscmr.indexing.manifest import MANIFEST, REFINE_FACTOR, default_refine, is_lossy
from dscmr.indexing.retriever import Retriever
from dscmr.indexing.shards import build_sharded_bundle

SHA = "cd" * 32
N, NQ, D = 8_000, 100, 32
PQ = "IVF64,PQ8"


def _build(out: Path, xb: np.ndarray, spec: BuildSpec, *, shards: int = 0) -> IndexBundle:
    kw = {"modality": "image", "items": [f"i{i}" for i in range(xb.shape[0])], "kind": "id",
          "run_info": {"checkpoint_sha256": SHA}, "spec": spec}  # fmt: skip
    if shards:
        return build_sharded_bundle(out, xb, shards=shards, **kw)
    return build_bundle(out, xb, **kw)


def _normed(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(found, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from dscmr.benchmarks.search import clustered_embeddings

    x = clustered_embeddings(N + NQ, D, seed=11)
    xb, xq = x[:N], x[N:]
    truth = np.argsort(-(_normed(xq) @ _normed(xb).T), axis=1, kind="stable")[:, :10]
    return xb, xq, truth


@pytest.fixture(scope="module")
def pq_bundle(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, ...]) -> IndexBundle:
    b = _build(
        tmp_path_factory.mktemp("refine") / "b", data[0], BuildSpec(float_factory=PQ, float_params=(("nprobe", 16),))
    )
    yield b
    b.close()


@pytest.mark.parametrize(
    ("factory", "lossy"),
    [("Flat", False), ("HNSW32", False), ("HNSW32,Flat", False), ("IVF1024,Flat", False),
     ("IVF4096_HNSW32,Flat", False), ("IVF1024,PQ32", True), ("IVF65536_HNSW32,PQ64", True), ("PQ16", True),
     ("IVF256,SQ8", True), ("OPQ16,IVF256,PQ16", True), ("PCA16,Flat", True), ("HNSW32,SQ8", True)],
)  # fmt: skip
def test_is_lossy_tells_compressed_storage_from_exact(factory: str, lossy: bool) -> None:
    assert is_lossy(factory) is lossy


def test_pq_bundle_stores_vectors_and_records_refine(pq_bundle: IndexBundle) -> None:
    m = json.loads((pq_bundle.path / MANIFEST).read_text())
    assert m["vectors"] == {"file": "vectors.npy", "normalized": True}
    assert m["search"]["refine"] == default_refine(N) == REFINE_FACTOR * 10
    assert m["metrics"] == ["cosine"]  # re-ranking is part of cosine search, not a hybrid metric
    assert pq_bundle.refine_for(10) == 100 and pq_bundle.refine_for(30) == 300


def test_refined_search_beats_raw_pq_and_scores_are_exact(
    pq_bundle: IndexBundle, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    xb, xq, truth = data
    assert pq_bundle.float_index is not None
    raw = pq_bundle.float_index.search(xq, 10)[1]
    D, I = pq_bundle.search_cosine(xq, 10)
    assert _recall(I, truth) >= 0.95 > _recall(raw, truth)
    exact = np.einsum("qd,qkd->qk", _normed(xq), _normed(xb)[I])
    np.testing.assert_allclose(D, exact, atol=1e-5)
    assert np.all(np.diff(D, axis=1) <= 1e-7)


def test_shortlist_overrides_refine_and_k_equal_to_shortlist_keeps_the_pq_set(
    pq_bundle: IndexBundle, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    _, xq, truth = data
    assert pq_bundle.float_index is not None
    raw = pq_bundle.float_index.search(xq, 10)[1]
    _, I = pq_bundle.search_cosine(xq, 10, shortlist=10)  # re-rank only the PQ top 10: the same set, reordered
    assert [set(a) for a in I.tolist()] == [set(a) for a in raw.tolist()]
    assert _recall(pq_bundle.search_cosine(xq, 10, shortlist=400)[1], truth) >= _recall(I, truth)
    with pytest.raises(QueryError, match="at least k"):
        pq_bundle.search_cosine(xq, 10, shortlist=5)


def test_retriever_cosine_through_a_refined_sq_bundle_equals_exact(trained_run: Path, tmp_path: Path) -> None:
    build_from_run(trained_run, tmp_path / "sq", modality="image", spec=BuildSpec(float_factory="IVF2,SQ4"))
    build_from_run(trained_run, tmp_path / "flat", modality="image", spec=BuildSpec(float_factory="Flat"))
    sq, flat = Retriever(trained_run, tmp_path / "sq"), Retriever(trained_run, tmp_path / "flat")
    assert sq.bundle.vectors is not None and flat.bundle.vectors is None
    ids = list(sq.dataset().test.txt_items[:4])
    a, b = sq.search_ids(ids, k=5, metric="cosine"), flat.search_ids(ids, k=5, metric="cosine")
    assert [[h.id for h in q] for q in a] == [[h.id for h in q] for q in b]  # k' 100 covers the whole split
    np.testing.assert_allclose([[h.score for h in q] for q in a], [[h.score for h in q] for q in b], atol=1e-5)


def test_no_vectors_turns_refine_off_and_exact_indexes_never_store_them(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    xb, xq, _ = data
    plain = _build(tmp_path / "plain", xb, BuildSpec(float_factory=PQ, keep_vectors=False))
    assert plain.vectors is None and plain.refine_for(10) is None
    assert plain.manifest.search_defaults().refine is None
    assert plain.float_index is not None
    np.testing.assert_array_equal(plain.search_cosine(xq, 10)[1], plain.float_index.search(xq, 10)[1])
    plain.close()
    flat = _build(tmp_path / "flat", xb, BuildSpec(float_factory="IVF64,Flat"))
    assert flat.vectors is None and flat.refine_for(10) is None and not (tmp_path / "flat" / "vectors.npy").exists()
    flat.close()


def test_old_manifest_without_refine_falls_back_to_the_rule(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    b = _build(tmp_path / "b", data[0][:2000], BuildSpec(float_factory="IVF16,PQ8"))
    b.close()
    path = tmp_path / "b" / MANIFEST
    m = json.loads(path.read_text())
    del m["search"]
    path.write_text(json.dumps(m))
    again = load_bundle(tmp_path / "b")
    assert again.refine_for(10) == default_refine(2000)
    again.close()


def test_sharded_pq_bundle_refines_like_the_single_build(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    xb, xq, _ = data
    spec = BuildSpec(float_factory=PQ, float_params=(("nprobe", 16),))
    single = _build(tmp_path / "one", xb, spec)
    sharded = _build(tmp_path / "three", xb, spec, shards=3)
    assert sharded.vectors is not None and sharded.manifest.search_defaults().refine == default_refine(N)
    np.testing.assert_array_equal(np.asarray(sharded.vectors), np.asarray(single.vectors))
    Da, Ia = single.search_cosine(xq, 10)
    Db, Ib = sharded.search_cosine(xq, 10)
    np.testing.assert_allclose(Db, Da, atol=1e-6)
    assert (Ia == Ib).mean() > 0.99  # ids may swap only among exact ties
    single.close()
    sharded.close()


def test_refine_search_refuses_vectors_that_do_not_match(pq_bundle: IndexBundle) -> None:
    assert pq_bundle.float_index is not None and pq_bundle.vectors is not None
    with pytest.raises(QueryError, match="rebuild the bundle"):
        refine_search(
            pq_bundle.float_index, np.asarray(pq_bundle.vectors)[:-1], np.ones((1, D), "f4"), 10, shortlist=50
        )


def test_vector_file_reads_the_rows_asked_for_and_refuses_bad_files(tmp_path: Path) -> None:
    from dscmr.errors import IndexBundleError
    from dscmr.indexing.vector_file import VectorFile

    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    vf = VectorFile(tmp_path / "v.npy")
    assert vf.shape == (50, 6)
    np.testing.assert_array_equal(vf.take(np.array([7, 0, 49, 7])), x[[7, 0, 49, 7]])
    vf.close()
    with pytest.raises(IndexBundleError, match="closed"):
        vf.take(np.array([1]))
    np.save(tmp_path / "d.npy", x.astype(np.float64))
    with pytest.raises(IndexBundleError, match="not a float32"):
        VectorFile(tmp_path / "d.npy")
    raw = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-24])
    with pytest.raises(IndexBundleError, match="shorter"):
        VectorFile(tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(IndexBundleError, match="not a .npy"):
        VectorFile(tmp_path / "junk.npy")


def test_memory_mapped_pq_bundle_reads_refine_rows_unmapped(
    pq_bundle: IndexBundle, data: tuple[np.ndarray, ...]
) -> None:
    xq = data[1]
    assert pq_bundle.vector_file is not None  # loaded memory-mapped (the default)
    ram = load_bundle(pq_bundle.path, mmap=False)
    assert ram.vector_file is None and ram.vectors is not None
    for a, b in zip(pq_bundle.search_cosine(xq, 10), ram.search_cosine(xq, 10), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    ram.close()


@pytest.mark.parametrize("shards", [0, 2])
def test_add_to_a_pq_bundle_appends_vectors_and_refines_the_new_items(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, np.ndarray], shards: int
) -> None:
    from dscmr.indexing.build import add_to_bundle

    xb = data[0]
    b = _build(tmp_path / "b", xb[:6000], BuildSpec(float_factory=PQ, float_params=(("nprobe", 64),)), shards=shards)
    b.close()
    new = xb[6000:6100]
    after = add_to_bundle(
        tmp_path / "b", new, items=[f"n{i}" for i in range(100)], checkpoint_sha256=SHA, source={"split": "more"}
    )
    assert after.count == 6100 and after.vectors is not None and after.vectors.shape == (6100, D)
    np.testing.assert_allclose(np.asarray(after.vectors[6000:]), _normed(new), atol=1e-6)
    assert after.manifest.search_defaults().refine == default_refine(6100)
    D_, I = after.search_cosine(new[:20], 1)
    assert (I[:, 0] == np.arange(6000, 6020)).all()  # each added item is its own nearest neighbour, exactly
    np.testing.assert_allclose(D_[:, 0], 1.0, atol=1e-5)
    after.close()
