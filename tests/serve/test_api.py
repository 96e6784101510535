"""The HTTP API of ``dscmr serve``, in process (FastAPI's test client): answers, and every bad input as a 4xx."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dscmr.serve.app import create_app
from dscmr.serve.limits import Limits
from dscmr.serve.state import ServeState

SEARCH = "/api/v1/search"


@pytest.fixture(scope="module")
def state(shapes_run) -> ServeState:
    return ServeState(shapes_run.run, [shapes_run.images, shapes_run.texts])


@pytest.fixture(scope="module")
def client(state) -> TestClient:
    return TestClient(create_app(state, watch_interval=None))


@pytest.fixture(scope="module")
def png(shapes_run) -> bytes:
    path = sorted((shapes_run.folder / "images").glob("*.png"))[0]
    return path.read_bytes()


def _caption(state: ServeState) -> str:
    return state.get("images").example_ids(1)[0]


def _bad(resp, status: int, *words: str) -> None:
    """A 4xx JSON error naming the problem, no traceback."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"] and "\n" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]


# ---------------------------------------------------------------------------------------------------------------
# Answers


def test_healthz_and_info(client, state):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/api/v1/info").json()
    assert info["run"]["raw_queries"] is True and len(info["run"]["checkpoint_sha256"]) == 64
    by_name = {b["name"]: b for b in info["bundles"]}
    assert by_name["images"]["modality"] == "image" and by_name["images"]["query_modality"] == "text"
    assert by_name["images"]["metrics"] == ["cosine", "hamming", "hybrid"] and by_name["texts"]["metrics"] == ["cosine"]
    assert by_name["images"]["count"] == state.get("images").retriever.bundle.count > 0
    assert "red" in by_name["images"]["classes"] and info["limits"]["max_upload_bytes"] == 10 * 1024 * 1024


def test_text_query_returns_ranked_images_with_classes_and_timing(client, state):
    res = client.post(SEARCH, json={"text": "a large red circle", "k": 5}).json()
    assert res["bundle"] == "images" and res["modality"] == "image" and res["metric"] == "cosine"
    hits = res["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:], strict=False))
    # the same ranking as the library
    lib = state.get("images").retriever.search_texts(["a large red circle"], k=5)[0]
    assert [h["id"] for h in hits] == [h.id for h in lib]
    classes = state.get("images").classes
    for h in hits:
        assert h["classes"] == [classes[i] for i in h["labels"]] and h["shares_class"] is None
        assert h["thumbnail"] == f"/api/v1/items/images/{h['id']}/thumbnail"
    t = res["timing_ms"]
    assert t["encode"] > 0 and t["search"] > 0 and t["total"] >= t["encode"] + t["search"] - 1e-3


def test_batch_of_texts(client):
    res = client.post(SEARCH, json={"texts": ["a blue square", "two yellow triangles"], "k": 3}).json()
    assert "hits" not in res and [r["query"]["text"] for r in res["results"]] == [
        "a blue square",
        "two yellow triangles",
    ]
    assert all(len(r["hits"]) == 3 for r in res["results"])


def test_dataset_item_query_says_which_hits_share_its_class(client, state):
    caption = _caption(state)
    res = client.post(SEARCH, json={"id": caption, "k": 10}).json()
    query_classes = set(res["results"][0]["classes"])
    assert query_classes
    for h in res["hits"]:
        assert h["shares_class"] == bool(query_classes & set(h["classes"]))
    # the same caption as free text is recognised as the dataset item
    res2 = client.post(SEARCH, json={"text": caption, "k": 10}).json()
    assert set(res2["results"][0]["classes"]) == query_classes


def test_image_upload_and_base64_give_the_same_texts(client, png):
    up = client.post(SEARCH, files={"image": ("q.png", png, "image/png")}, data={"k": "4"})
    assert up.status_code == 200, up.text
    b64 = client.post(SEARCH, json={"image": base64.b64encode(png).decode(), "k": 4}).json()
    assert up.json()["bundle"] == "texts" and up.json()["modality"] == "text"
    assert [h["id"] for h in up.json()["hits"]] == [h["id"] for h in b64["hits"]]
    assert all(isinstance(h["item"], str) and h["thumbnail"] is None for h in b64["hits"])


def test_hamming_and_hybrid(client):
    ham = client.post(SEARCH, json={"text": "a green circle", "metric": "hamming", "k": 5}).json()
    assert all(isinstance(h["score"], int) for h in ham["hits"])
    assert [h["score"] for h in ham["hits"]] == sorted(h["score"] for h in ham["hits"])
    hyb = client.post(SEARCH, json={"text": "a green circle", "metric": "hybrid", "k": 5, "shortlist": 10}).json()
    assert hyb["metric"] == "hybrid" and len(hyb["hits"]) == 5


def test_item_metadata_and_cached_thumbnail(client, state):
    rec = state.get("images").retriever.bundle.items([2])[0]
    meta = client.get("/api/v1/items/images/2").json()
    assert meta["kind"] == "path" and meta["labels"] == list(rec.labels)
    assert not Path(meta["item"]).is_absolute() and rec.item.endswith("/" + meta["item"])  # no server path leaks
    r1 = client.get("/api/v1/items/images/2/thumbnail")
    assert r1.status_code == 200 and r1.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r1.content)) as im:
        assert im.format == "JPEG" and max(im.size) <= 160
    assert client.get("/api/v1/items/images/2/thumbnail").content == r1.content
    small = client.get("/api/v1/items/images/2/thumbnail", params={"size": 32})
    with Image.open(io.BytesIO(small.content)) as im:
        assert max(im.size) <= 32


def test_page_static_files_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "dscmr search" in page.text and "http" not in page.text.replace("http-", "")
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/app.css").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/api/v1/search" in spec["paths"] and client.get("/docs").status_code == 200


def test_examples(client, state):
    res = client.get("/api/v1/bundles/images/examples", params={"n": 3}).json()
    assert res["query_modality"] == "text" and len(res["ids"]) == 3


# ---------------------------------------------------------------------------------------------------------------
# Bad input: 4xx JSON naming the problem


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 400, ("exactly one",)),
        ({"text": "a", "id": "b"}, 400, ("exactly one", "text, id")),
        ({"text": "a", "bundle": "nope"}, 404, ("unknown bundle", "nope")),
        ({"id": "no such caption at all"}, 400, ("no text item with id",)),
        ({"text": "a", "metric": "euclid"}, 400, ("unknown metric", "euclid")),
        ({"image": "AAAA", "bundle": "texts", "metric": "hamming"}, 400, ("texts", "hamming")),
        ({"text": "a", "k": 0}, 400, ("k must be",)),
        ({"text": "a", "k": 100000}, 400, ("k must be",)),
        ({"text": "a", "k": 5, "metric": "hybrid", "shortlist": 2}, 400, ("shortlist",)),
        ({"text": "x" * 1001}, 400, ("1000 characters",)),
        ({"texts": ["a"] * 33}, 400, ("at most 32",)),
        ({"texts": []}, 400, ("texts is empty",)),
        ({"text": "   "}, 400, ("empty query text",)),
        ({"text": "a", "bundle": "texts"}, 400, ("indexes texts",)),
        ({"image": "not base64!!"}, 415, ("base64",)),
        ({"image": base64.b64encode(b"hello, not an image").decode()}, 415, ("not a readable image",)),
        ({"text": "a", "colour": "red"}, 400, ("colour",)),
        ({"text": "a", "k": "ten"}, 400, ("k",)),
        ({"text": ["a"]}, 400, ("text",)),
        ({"text": "a", "k": True}, 400, ("k",)),
        ({"text": "a", "k": 1.5}, 400, ("k",)),
        ({"id": 5}, 400, ("id",)),
        ({"id": "x" * 2000}, 400, ("1000 characters",)),
        ({"id": " "}, 400, ("empty id",)),
        ({"image": ""}, 415, ("empty",)),
    ],
)
def test_bad_json_queries(client, body, status, words):
    _bad(client.post(SEARCH, json=body), status, *words)


def test_bad_bodies(client):
    _bad(client.post(SEARCH, content=b"xx", headers={"content-type": "multipart/form-data"}), 400, "boundary")
    two = [("image", ("a.png", b"x", "image/png")), ("image", ("b.png", b"y", "image/png"))]
    _bad(client.post(SEARCH, files=two), 400, "Too many files")
    _bad(client.post(SEARCH, data={"text": "a"}), 415, "x-www-form-urlencoded")
    _bad(client.post(SEARCH, content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON")
    _bad(client.post(SEARCH, content=b"text=a", headers={"content-type": "text/plain"}), 415, "text/plain")
    _bad(client.post(SEARCH, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)


def test_non_image_upload_is_415(client):
    _bad(
        client.post(SEARCH, files={"image": ("notes.txt", b"just some text", "text/plain")}),
        415,
        "not a readable image",
    )
    _bad(client.post(SEARCH, files={"image": ("empty.png", b"", "image/png")}), 415, "empty")


def test_truncated_image_is_415(client, png):
    _bad(client.post(SEARCH, files={"image": ("cut.png", png[: len(png) // 2], "image/png")}), 415, "image")


def test_decompression_bomb_is_refused_before_decoding(client):
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")  # a few kB on the wire, 400 Mpixel decoded
    assert len(buf.getvalue()) < 200_000
    _bad(client.post(SEARCH, files={"image": ("bomb.png", buf.getvalue(), "image/png")}), 415, "pixels")


def test_multipart_without_image_or_with_bad_fields(client, png):
    _bad(client.post(SEARCH, files={"other": ("q.png", png, "image/png")}), 400, "field named image")
    _bad(
        client.post(SEARCH, files={"image": ("q.png", png, "image/png")}, data={"k": "many"}),
        400,
        "k must be an integer",
    )
    _bad(
        client.post(SEARCH, files={"image": ("q.png", png, "image/png")}, data={"bundle": "images"}),
        400,
        "indexes images",
    )


def test_upload_over_the_limit_is_413(state, png):
    small = TestClient(create_app(state, limits=Limits(max_upload_bytes=1000), watch_interval=None))
    assert len(png) > 1000
    _bad(small.post(SEARCH, files={"image": ("q.png", png, "image/png")}), 413, "limit")
    _bad(small.post(SEARCH, json={"image": base64.b64encode(png).decode()}), 413, "limit")
    _bad(small.post(SEARCH, content=b"x" * 5_000_000, headers={"content-type": "application/json"}), 413, "limit")


def test_bad_item_requests(client):
    _bad(client.get("/api/v1/items/images/99999"), 404, "no item 99999")
    _bad(client.get("/api/v1/items/nope/1"), 404, "unknown bundle")
    _bad(client.get("/api/v1/items/images/-1"), 422)
    _bad(client.get("/api/v1/items/images/abc"), 422, "item_id")
    _bad(client.get(f"/api/v1/items/images/{2**70}"), 422)
    _bad(client.get("/api/v1/items/images/99999/thumbnail"), 404)
    _bad(client.get("/api/v1/items/texts/0/thumbnail"), 404, "not an image")
    _bad(client.get("/api/v1/items/images/0/thumbnail", params={"size": 10_000}), 400, "size")
    _bad(client.get("/api/v1/items/images/..%2F..%2Fetc%2Fpasswd/thumbnail"), 404)
    _bad(client.get("/no/such/route"), 404)
    _bad(client.get(SEARCH), 405)


def test_thumbnail_of_a_path_outside_the_dataset_is_refused(tmp_path, shapes_run):
    from dscmr.serve.thumbnails import ItemNotFoundError, resolve_inside

    inside = sorted((shapes_run.folder / "images").glob("*.png"))[0]
    roots = (shapes_run.folder.resolve(),)
    assert resolve_inside(str(inside), roots) == inside.resolve()
    outside = tmp_path / "secret.png"
    outside.write_bytes(inside.read_bytes())
    with pytest.raises(ItemNotFoundError, match="outside the dataset folder"):
        resolve_inside(str(outside), roots)
    with pytest.raises(ItemNotFoundError, match="outside"):
        resolve_inside(str(shapes_run.folder / "images" / ".." / ".." / ".." / "secret.png"), roots)
    with pytest.raises(ItemNotFoundError):
        resolve_inside(str(inside), ())


# ---------------------------------------------------------------------------------------------------------------
# The token


def test_token_is_required_on_every_request_but_the_health_probe(state):
    c = TestClient(create_app(state, token="s3cret", watch_interval=None))
    assert c.get("/healthz").json()["status"] == "ok"  # liveness probes carry no token
    for method, url in (
        ("get", "/"),
        ("get", "/api/v1/info"),
        ("post", SEARCH),
        ("get", "/docs"),
        ("get", "/healthz/x"),
    ):
        resp = getattr(c, method)(url)
        _bad(resp, 401, "token")
        assert resp.headers["www-authenticate"] == "Bearer"
    _bad(c.get("/api/v1/info", headers={"Authorization": "Bearer wrong"}), 401)
    ok = c.post(SEARCH, json={"text": "a red circle"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    # the page: /?token=... sets a cookie its own requests then carry
    page = c.get("/", params={"token": "s3cret"})
    assert page.status_code == 200 and "dscmr_token" in page.headers["set-cookie"]
    assert c.get("/api/v1/info").status_code == 200  # the client kept the cookie
    c.cookies.clear()
    assert c.get("/api/v1/info").status_code == 401


def test_feature_run_answers_ids_and_refuses_raw_queries(feature_run):
    c = TestClient(create_app(ServeState(feature_run.run, [feature_run.images]), watch_interval=None))
    info = c.get("/api/v1/info").json()
    assert info["run"]["raw_queries"] is False and info["query_kinds"] == ["id"]
    qid = c.get("/api/v1/bundles/fimages/examples", params={"n": 1}).json()["ids"][0]
    res = c.post(SEARCH, json={"id": qid, "k": 5}).json()
    assert len(res["hits"]) == 5 and res["results"][0]["classes"]
    assert any(h["shares_class"] for h in res["hits"])
    _bad(c.post(SEARCH, json={"text": "a red car"}), 400, "precomputed features")
    _bad(c.get("/api/v1/items/fimages/0/thumbnail"), 404)


def test_non_loopback_host_needs_a_token():
    from typer.testing import CliRunner

    from dscmr.cli.main import app
    from dscmr.errors import UsageError
    from dscmr.serve.server import check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    check_bind("0.0.0.0", "t")
    with pytest.raises(UsageError, match="--token"):
        check_bind("0.0.0.0", None)
    res = CliRunner().invoke(app, ["serve", "--run", "nowhere", "--index", "nowhere", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "--token" in res.output and "Traceback" not in res.output


def test_a_port_in_use_is_one_line_before_loading_anything():
    import socket

    from typer.testing import CliRunner

    from dscmr.cli.main import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(app, ["serve", "--run", "nowhere", "--index", "nowhere", "--port", str(port)])
    assert res.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in res.output


def test_synthetic_embeddings_bundle(tmp_path, shapes_run):
    from dscmr.indexing.bundle import load_bundle
    from dscmr.serve.bench import synthetic_bundle

    out = synthetic_bundle(shapes_run.run, tmp_path / "syn", n=500)
    b = load_bundle(out)
    assert b.count == 500 and b.metrics == ("cosine", "hamming", "hybrid")
    c = TestClient(create_app(ServeState(shapes_run.run, [out]), watch_interval=None))
    res = c.post(SEARCH, json={"text": "a red circle", "k": 3}).json()
    assert [h["item"].startswith("synthetic-") for h in res["hits"]] == [True] * 3
    assert np.isfinite([h["score"] for h in res["hits"]]).all()
