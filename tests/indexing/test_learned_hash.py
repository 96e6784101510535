"""The learned hash layer trained jointly with DSCMR produces usable codes, and the hashing benchmark runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dscmr.config import load_config
from dscmr.indexing import BuildSpec, Retriever, build_from_run
from dscmr.indexing.from_run import learned_layer
from dscmr.train import encode_split, load_run, train


def test_learned_hash_training_produces_codes(tiny_config: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(tiny_config, ["model.hash_bits=16", "train.epochs=4"])
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.model.hash_bits == 16
    hasher = learned_layer(run)
    from dscmr.data import load_dataset

    u, _ = encode_split(run.model, load_dataset(run.config.data).test)
    codes = hasher.encode(u.numpy())
    assert codes.shape == (len(u), 2) and codes.dtype == np.uint8
    # the hasher's bits are the signs of the model's own relaxed codes tanh(W u + b)
    relaxed = run.model.hash_codes(u).detach().numpy()
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1), (relaxed > 0).astype(np.uint8))
    # and a bundle built from them answers hamming queries
    build_from_run(run, tmp_path / "b", modality="image", spec=BuildSpec(binary="learned", bits=16))
    r = Retriever(run, tmp_path / "b")
    hits = r.search_ids([r.dataset().test.txt_items[0]], k=3, metric="hamming")[0]
    assert len(hits) == 3


def test_bench_hashing_on_tiny_data(tiny_config: Path, tmp_path: Path) -> None:
    from dscmr.benchmarks.hashing import bench_hashing

    torch.set_num_threads(1)
    report = bench_hashing(load_config(tiny_config), tmp_path / "runs", bits=(16,), epochs=3)
    assert [(r["method"], r["bits"]) for r in report["results"]] == [("sign", 16), ("itq", 16), ("learned", 16)]
    for r in report["results"]:
        assert 0 < r["avg"] <= 1 and r["ratio"] > 0


def test_hash_layer_spreads_codes_despite_a_common_offset() -> None:
    from dscmr.models import DSCMR

    torch.manual_seed(0)
    m = DSCMR(8, 6, 3, img_hidden=(16,), txt_hidden=(16,), common_dim=12, hash_bits=16)
    u = torch.randn(64, 12) * 0.1 + 10.0  # embeddings dominated by a shared offset, like trained DSCMR ones
    m.train()
    h = m.hash_codes(u)
    assert (h > 0).float().mean(0).sub(0.5).abs().max() < 0.3  # each bit is centred over the batch
    assert m.hash_codes(u[:1]).shape == (1, 16)  # a batch of one falls back to the running statistics
    m.eval()
    codes = learned_layer_of(m).encode(u.numpy())
    np.testing.assert_array_equal(np.unpackbits(codes, axis=1), (m.hash_codes(u).detach().numpy() > 0))


def learned_layer_of(model):
    from types import SimpleNamespace

    return learned_layer(SimpleNamespace(model=model, run_dir="mem"))


def test_hamming_codes_are_the_index_bits() -> None:
    """The +-1 codes used for Hamming mAP are exactly the bits packed into the binary index."""
    from dscmr.indexing.hashing import fit_hasher, hamming_codes

    x = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)
    hasher = fit_hasher("itq", x, 16, seed=0)
    signs = hamming_codes(hasher, x)
    assert signs.shape == (40, 16) and set(np.unique(signs)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(np.unpackbits(hasher.encode(x), axis=1), signs > 0)
