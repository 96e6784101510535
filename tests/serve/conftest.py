"""Fixtures for the service tests: a tiny built-in ``shapes`` run (raw queries) with an image and a text bundle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch


@dataclass(frozen=True)
class ShapesRun:
    run: Path
    images: Path  # bundle of test images: float Flat + 16-bit ITQ (cosine, hamming, hybrid)
    texts: Path  # bundle of test captions: float Flat
    folder: Path  # the dataset folder


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory: pytest.TempPathFactory) -> ShapesRun:
    """The demo's quick settings (100 pictures at 64 px, 4 epochs), built once per session."""
    from dscmr.data.builtin import builtin_folder
    from dscmr.demo import demo_config
    from dscmr.indexing import BuildSpec, build_from_run
    from dscmr.train import load_run, train

    tmp = tmp_path_factory.mktemp("serve_run")
    torch.set_num_threads(1)
    cfg = demo_config(dataset="shapes", quick=True, cache_dir=str(tmp / "cache"), threads=1)
    folder = builtin_folder("shapes", str(tmp / "cache"), n=100)
    cfg = replace(cfg, data=replace(cfg.data, format="folder", root=str(folder)))
    train(cfg, tmp / "run", progress=False)
    run = load_run(tmp / "run")
    build_from_run(run, tmp / "images", modality="image", spec=BuildSpec(binary="itq", bits=16))
    build_from_run(run, tmp / "texts", modality="text", spec=BuildSpec())
    return ShapesRun(tmp / "run", tmp / "images", tmp / "texts", folder)


@dataclass(frozen=True)
class FeatureRun:
    run: Path
    images: Path  # bundle of the test images (feature mode: items are dataset ids)


@pytest.fixture(scope="session")
def feature_run(tmp_path_factory: pytest.TempPathFactory) -> FeatureRun:
    """A run trained for a few epochs on a synthetic 240-pair npz (id queries only), with a float image bundle."""
    import numpy as np

    from dscmr.config import load_config
    from dscmr.indexing import BuildSpec, build_from_run
    from dscmr.train import train
    from tests.conftest import make_clustered_features

    tmp = tmp_path_factory.mktemp("serve_feature_run")
    img, txt, labels = make_clustered_features(240, 4)
    np.savez(
        tmp / "tiny.npz",
        img=img,
        txt=txt,
        labels=labels,
        split=np.array(["train"] * 160 + ["val"] * 30 + ["test"] * 50),
    )
    (tmp / "tiny.toml").write_text(
        f'[data]\nformat = "npz"\nroot = "{tmp / "tiny.npz"}"\n\n[model]\nimg_hidden = [32]\ntxt_hidden = [32]\n'
        "common_dim = 16\n\n[train]\nepochs = 3\nbatch_size = 32\nlr = 3e-3\npatience = 0\nthreads = 1\n"
    )
    torch.set_num_threads(1)
    train(load_config(tmp / "tiny.toml"), tmp / "run", progress=False)
    build_from_run(tmp / "run", tmp / "fimages", modality="image", spec=BuildSpec())
    return FeatureRun(tmp / "run", tmp / "fimages")


@pytest.fixture(scope="session")
def live_server(shapes_run) -> Iterator[str]:
    """A real uvicorn server of the shapes run on a free loopback port (in a thread); yields its URL."""
    import uvicorn

    from dscmr.serve.app import create_app
    from dscmr.serve.bench import free_port
    from dscmr.serve.state import ServeState

    state = ServeState(shapes_run.run, [shapes_run.images, shapes_run.texts])
    port = free_port()
    config = uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)
