"""``dscmr serve --max-encodes``: text and image queries run through the encoders on that many threads of their own,
so at most that many at once; id queries never wait for them."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from typer.testing import CliRunner

import dscmr.serve.query as query_module
from dscmr.cli.main import app
from dscmr.serve.limits import Limits, encode_slots
from dscmr.serve.query import Query, run_query
from dscmr.serve.state import ServeState


class _Counting:
    """Wraps ``query_features``: counts the calls running at once. Each call waits (at most 30 s) until ``expect``
    calls run together, so the overlap the gate allows always happens, then holds ``hold`` seconds more."""

    def __init__(self, real: Any, *, expect: int, hold: float) -> None:
        self.real, self.expect, self.hold = real, expect, hold
        self.active = self.peak = self.calls = 0
        self.cond = threading.Condition()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.cond:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.peak >= self.expect, timeout=30)
        try:
            time.sleep(self.hold)
            return self.real(*args, **kwargs)
        finally:
            with self.cond:
                self.active -= 1


def _concurrent_queries(state: ServeState, queries: list[Query]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def one(q: Query) -> None:
        try:
            out.append(run_query(state, q, Limits()))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return out


@pytest.mark.parametrize("slots", [1, 2])
def test_encodings_at_once_never_exceed_the_slots(shapes_run, monkeypatch, slots):
    state = ServeState(shapes_run.run, [shapes_run.images, shapes_run.texts], encode_slots=slots)
    counting = _Counting(query_module.query_features, expect=slots, hold=0.3)
    monkeypatch.setattr(query_module, "query_features", counting)
    picture = sorted((shapes_run.folder / "images").glob("*.png"))[0].read_bytes()
    queries = [Query(texts=["a large red circle"]) for _ in range(4)] + [Query(image=picture) for _ in range(2)]
    answers = _concurrent_queries(state, queries)
    assert counting.calls == 6 and len(answers) == 6
    assert all(len(a["hits"]) == 10 for a in answers)
    # Six requests on six threads, each held until `slots` of them run together and 0.3 s more: without the encoder
    # threads all six overlap; with them, exactly `slots`.
    assert counting.peak == slots


def test_id_queries_do_not_wait_for_the_encoders(shapes_run):
    state = ServeState(shapes_run.run, [shapes_run.images], encode_slots=1)
    item = state.get("images").example_ids(1)[0]
    release, busy = threading.Event(), threading.Event()

    def long_query() -> bool:
        busy.set()
        return release.wait(120)

    holder = threading.Thread(target=state.encode, args=(long_query,))
    holder.start()  # a long image query holds the only encoder thread
    try:
        assert busy.wait(60)
        answers = _concurrent_queries(state, [Query(id=item, k=3)])
    finally:
        release.set()
        holder.join(timeout=60)
    assert len(answers[0]["hits"]) == 3


def test_encodings_run_on_the_encoder_threads(shapes_run, monkeypatch):
    state = ServeState(shapes_run.run, [shapes_run.texts, shapes_run.images], encode_slots=2)
    names: list[str] = []
    real = query_module.query_features

    def recording(*args: Any, **kwargs: Any) -> Any:
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(query_module, "query_features", recording)
    picture = sorted((shapes_run.folder / "images").glob("*.png"))[0].read_bytes()
    _concurrent_queries(state, [Query(texts=["a red circle"]), Query(image=picture)] * 3)
    assert len(names) == 6 and all(n.startswith("dscmr-encode") for n in names), names


def test_default_slots_and_bad_values(shapes_run, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert (encode_slots(), encode_slots(threads=2), encode_slots(threads=16), encode_slots(3)) == (8, 4, 1, 3)
    assert ServeState(shapes_run.run, [shapes_run.images]).encode_slots == 8
    res = CliRunner().invoke(
        app, ["serve", "--run", str(shapes_run.run), "--index", str(shapes_run.images), "--max-encodes", "-1"]
    )
    assert res.exit_code == 2 and "--max-encodes must be 0" in res.output and "Traceback" not in res.output


def test_a_real_server_takes_max_encodes(shapes_run):
    """``dscmr serve --max-encodes 3`` in its own process: /api/v1/info says 3, and 8 concurrent text and image
    queries all answer."""
    import base64
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from dscmr.serve.bench import free_port, start_server

    port = free_port()
    proc = start_server(shapes_run.run, [shapes_run.images, shapes_run.texts], port=port, extra=("--max-encodes", "3"))
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/api/v1/info", timeout=30).json()["encode_slots"] == 3
        picture = sorted((shapes_run.folder / "images").glob("*.png"))[0].read_bytes()
        bodies = [{"text": "a large red circle", "k": 4}] * 4 + [
            {"image": base64.b64encode(picture).decode(), "k": 4}
        ] * 4

        def post(body: dict[str, Any]) -> httpx.Response:
            return httpx.post(f"{url}/api/v1/search", json=body, timeout=120)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, bodies))
        assert [r.status_code for r in answers] == [200] * 8
        assert all(len(r.json()["hits"]) == 4 for r in answers)
        assert {r.json()["modality"] for r in answers} == {"image", "text"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
