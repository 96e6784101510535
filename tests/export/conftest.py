"""A tiny trained run per built-in dataset (reduced, like `dscmr demo --quick`), shared by the ONNX tests."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dscmr.encoders.engine import onnxruntime_available

SIZES = {"shapes": 100, "digits": 200}


def train_tiny_run(dataset: str, root, *, cache_dir) -> object:
    """Train the quick demo config on a reduced built-in set into ``root / dataset``; return the run folder."""
    from dscmr.data.builtin import builtin_folder
    from dscmr.demo import demo_config
    from dscmr.train import train

    folder = builtin_folder(dataset, cache_dir, n=SIZES[dataset])
    cfg = demo_config(dataset=dataset, quick=True, cache_dir=str(cache_dir), threads=1)
    cfg = replace(cfg, data=replace(cfg.data, format="folder", root=str(folder)))
    run_dir = root / dataset
    train(cfg, run_dir, progress=False)
    return run_dir


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    if not onnxruntime_available():
        pytest.skip("onnxruntime/onnx not installed: pip install onnxruntime onnx")
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, onnx_cache):
    root = tmp_path_factory.mktemp("runs")
    return {name: train_tiny_run(name, root, cache_dir=onnx_cache) for name in SIZES}
