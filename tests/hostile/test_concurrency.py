"""Concurrent writers and readers of one bundle, as real processes: 8 `dscmr index add` (each adding the test split
of its own copy of the data) while `dscmr search` processes query the same bundle. Writers serialise on the bundle's
lock, so no add is lost; readers never touch a live writer's files, so every search is answered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.hostile.conftest import DSCMR

ADDS = 8
SEARCHES = 6


def _start(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "DSCMR_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*DSCMR, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
def test_concurrent_adds_and_searches_lose_nothing(tmp_path: Path) -> None:
    from dscmr.indexing import BuildSpec, build_from_run, load_bundle
    from tests.indexing.conftest import make_tiny_run

    run = make_tiny_run(tmp_path, epochs=1)
    bundle = tmp_path / "bundle"
    first = build_from_run(run, bundle, modality="image", spec=BuildSpec(binary="sign", bits=16)).count
    copies = []
    for i in range(ADDS):
        (tmp_path / f"data{i}").mkdir()
        copies.append(shutil.copy(tmp_path / "tiny.npz", tmp_path / f"data{i}" / "tiny.npz"))

    adds = [_start("index", "add", "--bundle", bundle, "--run", run, "--data", c, "--json") for c in copies]
    searches = []
    for _ in range(SEARCHES):  # spread the readers over the writers' lifetime
        searches.append(_start("search", "text", "--query-id", "190", "--run", run, "--index", bundle, "--json"))
        time.sleep(0.5)
    add_out = [(*p.communicate(timeout=600), p.returncode) for p in adds]
    search_out = [(*p.communicate(timeout=600), p.returncode) for p in searches]

    for _, err, code in add_out:
        assert code == 0, err
        assert "Traceback" not in err
    for out, err, code in search_out:
        assert code == 0, err
        assert len(json.loads(out)["hits"]) == 10
    b = load_bundle(bundle, verify=True)
    assert b.count == first + ADDS * first
    assert [r.id for r in b.all_items()] == list(range(b.count))
    assert len(b.manifest.sources) == 1 + ADDS
    assert b.float_index is not None and b.float_index.ntotal == b.count
    assert sorted(json.loads(out)["count"] for out, _, _ in add_out) == [first * (i + 2) for i in range(ADDS)]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle.") and p.name != ".bundle.lock"]
    assert leftovers == []
