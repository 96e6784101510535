"""Bundles replaced or extended on disk are picked up atomically: requests in flight finish on the old version."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from dscmr.indexing import BuildSpec, build_from_run
from dscmr.serve.app import create_app
from dscmr.serve.state import ServeState

SEARCH = "/api/v1/search"


@pytest.fixture
def bundle(tmp_path, shapes_run):
    return build_from_run(
        shapes_run.run, tmp_path / "live", modality="image", spec=BuildSpec(binary="itq", bits=16)
    ).path


def test_replaced_bundle_is_picked_up_and_old_requests_finish_on_the_old_version(bundle, shapes_run):
    state = ServeState(shapes_run.run, [bundle])
    client = TestClient(create_app(state, watch_interval=None))
    old = state.get("live")
    n_old = old.retriever.bundle.count
    assert client.post("/api/v1/reload").json()["bundles"] == {"live": "unchanged"}

    build_from_run(shapes_run.run, bundle, modality="image", split="train", spec=BuildSpec())
    # a request that took the old version before the swap still answers from it, completely
    hits = old.retriever.search_texts(["a red circle"], k=n_old)[0]
    assert len(hits) == n_old and all(0 <= h.id < n_old for h in hits)

    res = client.post("/api/v1/reload").json()
    assert res == {"bundles": {"live": "reloaded"}, "versions": {"live": 2}}
    new = state.get("live")
    assert new.retriever.bundle.count != n_old and new.retriever.bundle.metrics == ("cosine",)
    info = client.get("/api/v1/info").json()["bundles"][0]
    assert info["version"] == 2 and info["count"] == new.retriever.bundle.count
    ans = client.post(SEARCH, json={"text": "a red circle", "k": 3, "bundle": "live"}).json()
    assert ans["version"] == 2
    # the old version's metric is gone with it: a clear 400, not a 500
    assert client.post(SEARCH, json={"text": "a red circle", "metric": "hamming"}).status_code == 400


def test_no_request_sees_a_half_state_while_the_watcher_swaps(bundle, shapes_run):
    state = ServeState(shapes_run.run, [bundle])
    counts = {1: state.get("live").retriever.bundle.count}
    client = TestClient(create_app(state, watch_interval=0.05))
    problems: list[str] = []
    answers: list[tuple[int, list[int]]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            r = client.post(SEARCH, json={"text": "a blue square", "k": 50})
            if r.status_code != 200:
                problems.append(r.text)
                continue
            body = r.json()
            answers.append((body["version"], [h["id"] for h in body["hits"]]))

    with client:  # runs the lifespan: the watcher thread checks the folder every 0.05 s
        t = threading.Thread(target=hammer)
        t.start()
        try:
            for version, split in ((2, "train"), (3, "val")):
                built = build_from_run(shapes_run.run, bundle, modality="image", split=split, spec=BuildSpec())
                counts[version] = built.count
                deadline = time.monotonic() + 30
                while state.get("live").version < version and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert state.get("live").version == version
        finally:
            stop.set()
            t.join()
        last = client.post(SEARCH, json={"text": "a blue square", "k": 50}).json()
        answers.append((last["version"], [h["id"] for h in last["hits"]]))
    assert not problems
    assert {v for v, _ in answers} >= {3}
    for version, ids in answers:  # every answer is whole: as many hits as its version holds (k=50 > count)
        assert len(ids) == min(50, counts[version]) and all(0 <= i < counts[version] for i in ids)


def test_reload_during_a_running_index_add(bundle, shapes_run):
    """A real `dscmr index add` process extends the bundle while the server keeps answering and reloading."""
    state = ServeState(shapes_run.run, [bundle])
    client = TestClient(create_app(state, watch_interval=None))
    n_old = state.get("live").retriever.bundle.count
    cmd = [
        sys.executable,
        "-m",
        "dscmr.cli.main",
        "index",
        "add",
        "--bundle",
        str(bundle),
        "--run",
        str(shapes_run.run),
    ]
    proc = subprocess.Popen(
        [*cmd, "--split", "val", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    statuses: set[str] = set()
    served = 0
    while proc.poll() is None:
        statuses.update(client.post("/api/v1/reload").json()["bundles"].values())
        r = client.post(SEARCH, json={"text": "a green triangle", "k": 5})
        assert r.status_code == 200, r.text
        assert len(r.json()["hits"]) == 5
        served += 1
        time.sleep(0.01)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    statuses.update(client.post("/api/v1/reload").json()["bundles"].values())
    assert "reloaded" in statuses and served > 0
    lb = state.get("live")
    assert lb.retriever.bundle.count > n_old and lb.version >= 2
    ids = [
        h["id"]
        for h in client.post(SEARCH, json={"text": "a green triangle", "k": lb.retriever.bundle.count}).json()["hits"]
    ]
    assert sorted(ids) == list(range(lb.retriever.bundle.count))


def test_verify_refuses_a_bundle_whose_file_was_altered(shapes_run, tmp_path):
    """``serve --verify``: a file that no longer matches its manifest hash is refused at load, not served."""
    import shutil

    from dscmr.errors import IndexBundleError

    bundle = tmp_path / "images"
    shutil.copytree(shapes_run.images, bundle)
    assert ServeState(shapes_run.run, [bundle], verify=True).get("images").retriever.bundle.count > 0
    target = next(p for p in (bundle / "vectors.npy", bundle / "float.faiss") if p.exists())
    data = bytearray(target.read_bytes())
    data[-8:] = bytes(x ^ 0xFF for x in data[-8:])  # same size, other content: only the hash check sees it
    target.write_bytes(bytes(data))
    ServeState(shapes_run.run, [bundle])  # without --verify it loads
    with pytest.raises(IndexBundleError):
        ServeState(shapes_run.run, [bundle], verify=True)
