"""Float and binary indexes against brute force, hashing maths, tie-breaking and hybrid recall."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from dscmr.benchmarks.search import recall_at
from dscmr.errors import ConfigError, QueryError
from dscmr.indexing import BinaryIndex, FloatIndex, fit_itq, fit_sign, hybrid_search, pack_codes, unpack_codes
from dscmr.indexing.hashing import hamming_distances, itq_rotation, quantization_error


def brute_cosine(xb: np.ndarray, xq: np.ndarray) -> np.ndarray:
    nb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    nq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    return nq.astype(np.float64) @ nb.T.astype(np.float64)


def test_flat_matches_brute_force_tie_tolerant(clustered: np.ndarray) -> None:
    xb, xq = clustered[:2000], clustered[2000:]
    fi = FloatIndex(32, "Flat")
    fi.add(xb)
    D, I = fi.search(xq, 10)
    S = brute_cosine(xb, xq)
    for q in range(len(xq)):
        # the returned scores are the true scores of the returned ids, and the k-th score equals the true k-th
        np.testing.assert_allclose(D[q], S[q, I[q]], atol=1e-5)
        kth = np.sort(S[q])[::-1][9]
        assert D[q, -1] == pytest.approx(kth, abs=1e-5)
        assert (np.diff(D[q]) <= 1e-7).all()


def test_scores_are_cosine_whatever_the_norms() -> None:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((50, 8)).astype(np.float32) * rng.uniform(0.1, 10, (50, 1)).astype(np.float32)
    fi = FloatIndex(8)
    fi.add(xb)
    D, I = fi.search(xb[:5] * 7.0, 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(5))
    np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("factory,params", [("HNSW16", {"efSearch": 64}), ("IVF16,Flat", {"nprobe": 16})])
def test_ann_factories_reach_high_recall(clustered: np.ndarray, factory: str, params: dict) -> None:
    xb, xq = clustered[:2000], clustered[2000:]
    exact = FloatIndex(32)
    exact.add(xb)
    _, gt = exact.search(xq, 10)
    fi = FloatIndex(32, factory)
    assert fi.train(xb) == (0 if factory.startswith("HNSW") else 2000)
    fi.add(xb)
    fi.set_params(**params)
    _, I = fi.search(xq, 10)
    assert recall_at(I, gt) >= 0.95


def test_boundary_checks() -> None:
    fi = FloatIndex(4)
    with pytest.raises(QueryError, match="dimension 3"):
        fi.add(np.zeros((2, 3), np.float32))
    with pytest.raises(QueryError, match="NaN"):
        fi.add(np.full((1, 4), np.nan, np.float32))
    with pytest.raises(QueryError, match="k must be"):
        fi.search(np.ones((1, 4), np.float32), 0)
    with pytest.raises(ConfigError, match="factory"):
        FloatIndex(4, "NotAnIndex99")
    with pytest.raises(ConfigError, match="binary index factory"):
        BinaryIndex(16, "BNotAnIndex")
    with pytest.raises(QueryError, match="no efSearch"):
        fi.set_params(efSearch=10)
    with pytest.raises(QueryError, match="multiple of 8"):
        BinaryIndex(12)
    bi = BinaryIndex(16)
    with pytest.raises(QueryError, match="uint8"):
        bi.add(np.zeros((2, 2), np.int32))
    with pytest.raises(QueryError, match="16"):
        bi.add(np.zeros((2, 3), np.uint8))


def test_packbits_layout() -> None:
    bits = np.zeros((2, 16), dtype=bool)
    bits[0, 0] = True  # first bit -> most significant bit of byte 0
    bits[1, 15] = True  # last bit -> least significant bit of byte 1
    codes = pack_codes(bits)
    assert codes.dtype == np.uint8 and codes.shape == (2, 2) and codes.flags.c_contiguous
    np.testing.assert_array_equal(codes, [[0x80, 0x00], [0x00, 0x01]])
    np.testing.assert_array_equal(unpack_codes(codes, 16), bits)
    np.testing.assert_array_equal(pack_codes(np.where(bits, 1.0, -1.0)), codes)  # +-1 input, positive = 1


def test_hamming_equals_quarter_squared_distance_of_pm1() -> None:
    rng = np.random.default_rng(1)
    a = np.where(rng.random((20, 64)) > 0.5, 1.0, -1.0)
    b = np.where(rng.random((30, 64)) > 0.5, 1.0, -1.0)
    want = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / 4
    ca, cb = pack_codes(a), pack_codes(b)
    np.testing.assert_array_equal(hamming_distances(ca, cb), want)
    bi = BinaryIndex(64)
    bi.add(cb)
    D, I = bi.search(ca, 30)
    np.testing.assert_array_equal(D, np.take_along_axis(want, I, axis=1))


@pytest.mark.parametrize("threads", [1, 2])
def test_bflat_ties_are_broken_by_id(threads: int) -> None:
    rng = np.random.default_rng(2)
    # 16-bit codes with only 4 distinct bytes: thousands of exact ties at every distance
    cb = rng.integers(0, 4, size=(5000, 2), dtype=np.uint8)
    cq = rng.integers(0, 4, size=(20, 2), dtype=np.uint8)
    bi = BinaryIndex(16)
    bi.add(cb)
    dist = hamming_distances(cq, cb)
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        for k in (1, 10, 300):
            for batch in (cq, *(cq[i : i + 1] for i in range(3))):
                D, I = bi.search(batch, k)
                short = bi.shortlist(batch, k)  # the same set, unordered (for re-ranking)
                rows = [int(np.flatnonzero((cq == r).all(1))[0]) for r in batch]
                for j, q in enumerate(rows):
                    want = np.lexsort((np.arange(len(cb)), dist[q]))[:k]
                    np.testing.assert_array_equal(I[j], want)
                    np.testing.assert_array_equal(np.sort(short[j]), np.sort(want))
    finally:
        faiss.omp_set_num_threads(old)


def test_sign_hash_is_mean_centred(clustered: np.ndarray) -> None:
    h = fit_sign(clustered, 32)
    np.testing.assert_array_equal(h.A, np.eye(32, dtype=np.float32))
    z = h.project(clustered)
    assert abs(float((z > 0).mean()) - 0.5) < 0.05  # centring balances the bits
    h16 = fit_sign(clustered, 16)
    assert h16.encode(clustered).shape == (len(clustered), 2)


def test_itq_reduces_quantization_error_vs_random_rotations(clustered: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for bits in (16, 32, 64):  # 64 > d = 32: the lifted case
        z = fit_itq(clustered, bits).project(clustered)
        err = quantization_error(z)
        for _ in range(5):
            q, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
            assert err < quantization_error(z @ q) - 1e-3  # a random rotation of the same projection is worse
    v = rng.standard_normal((500, 8)) * np.linspace(2, 0.5, 8)
    r = itq_rotation(v, iterations=30)
    np.testing.assert_allclose(r @ r.T, np.eye(8), atol=1e-8)


def test_hasher_round_trip(tmp_path, clustered: np.ndarray) -> None:
    from dscmr.indexing import LinearHasher

    h = fit_itq(clustered, 16)
    h.save(tmp_path / "h.npz")
    h2 = LinearHasher.load(tmp_path / "h.npz")
    np.testing.assert_array_equal(h.encode(clustered), h2.encode(clustered))


def test_hybrid_recall_and_exact_scores(clustered: np.ndarray) -> None:
    xb, xq = clustered[:2000], clustered[2000:]
    exact = FloatIndex(32)
    exact.add(xb)
    _, gt = exact.search(xq, 10)
    h = fit_itq(xb, 32)
    bi = BinaryIndex(32)
    bi.add(h.encode(xb))
    vec = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    _, I_ham = bi.search(h.encode(xq), 10)
    D, I = hybrid_search(bi, vec, h.encode(xq), xq, 10, shortlist=400)
    assert recall_at(I, gt) >= 0.95
    assert recall_at(I, gt) > recall_at(I_ham, gt)
    S = brute_cosine(xb, xq)
    np.testing.assert_allclose(D, np.take_along_axis(S, I, axis=1), atol=1e-5)
    # shortlist == whole database: hybrid is exact
    _, I_all = hybrid_search(bi, vec, h.encode(xq), xq, 10, shortlist=2000)
    assert recall_at(I_all, gt) == 1.0
    with pytest.raises(QueryError, match="shortlist"):
        hybrid_search(bi, vec, h.encode(xq), xq, 10, shortlist=5)


def test_rerank_pads_orders_ties_by_id_and_rejects_foreign_ids(tmp_path) -> None:
    from dscmr.indexing.hybrid import rerank

    rng = np.random.default_rng(4)
    vec = rng.normal(size=(50, 8)).astype(np.float32)
    vec[10] = vec[3]  # an exact tie: id 3 must come before id 10
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    np.save(tmp_path / "v.npy", vec)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")  # bundles keep the vectors read-only on disk
    xq = np.stack([vec[3] * 2.0, rng.normal(size=8).astype(np.float32)])
    cand = np.array([[10, 7, -1, 3, 20], [-1, -1, 4, -1, -1]])
    D, I = rerank(xq, cand, mm, 3)
    S = brute_cosine(vec, xq)
    assert I[0, :2].tolist() == [3, 10]
    assert I[0, 2] in (7, 20) and D[0, 2] == pytest.approx(max(S[0, 7], S[0, 20]), abs=1e-6)
    np.testing.assert_allclose(D[0, :2], S[0, [3, 10]], atol=1e-6)
    assert I[1].tolist() == [4, -1, -1] and D[1, 0] == pytest.approx(S[1, 4], abs=1e-6)
    assert np.isneginf(D[1, 1:]).all()
    with pytest.raises(QueryError, match="outside the 50 vectors"):
        rerank(xq, np.array([[1, 50], [2, 3]]), mm, 1)
