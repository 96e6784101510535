"""The HTTP layer of ``dscmr serve``: FastAPI routes that validate, call the retrieval layer, and serialise.

Routes (every error is a JSON body ``{"error": "<one line>"}`` with a 4xx status; a 500 is a bug):

- ``GET /`` the search page (``static/``), ``GET /healthz``, ``GET /docs`` (OpenAPI page), ``GET /openapi.json``;
- ``GET /api/v1/info``: run, bundles (modality, count, metrics, classes, version), limits;
- ``POST /api/v1/search``: a JSON body with exactly one of ``text``, ``texts``, ``image`` (base64) or ``id``, or a
  ``multipart/form-data`` upload (field ``image``); plus ``bundle``, ``k``, ``metric``, ``shortlist``;
- ``GET /api/v1/items/{bundle}/{id}`` and ``GET /api/v1/items/{bundle}/{id}/thumbnail`` (JPEG);
- ``POST /api/v1/reload``: pick up bundles changed on disk now (a watcher also does it every second).

With a token, every request but ``/healthz`` must carry ``Authorization: Bearer TOKEN`` (or the ``dscmr_token``
cookie that opening ``/?token=TOKEN`` sets for the page); otherwise it gets a 401.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable, MutableMapping
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dscmr.errors import DscmrError, IndexBundleError, UsageError
from dscmr.indexing.retriever import METRICS
from dscmr.serve.limits import Limits
from dscmr.serve.query import Query, run_query
from dscmr.serve.state import ServeState, UnknownBundleError
from dscmr.serve.thumbnails import (
    ItemNotFoundError,
    PayloadTooLargeError,
    ThumbnailCache,
    UnsupportedImageError,
    resolve_inside,
)

log = logging.getLogger(__name__)
TOKEN_COOKIE = "dscmr_token"
MAX_ID = 2**62


class SearchBody(BaseModel):
    """``POST /api/v1/search`` as JSON: exactly one of ``text``, ``texts``, ``image``, ``id``."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no coercion: k=true or text=5 are errors

    text: str | None = None
    texts: list[str] | None = None
    image: str | None = None
    id: str | None = None
    bundle: str | None = None
    k: int = 10
    metric: str | None = None
    shortlist: int | None = None


def _status(exc: DscmrError) -> int:
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, UnsupportedImageError):
        return 415
    if isinstance(exc, UnknownBundleError | ItemNotFoundError):
        return 404
    if isinstance(exc, IndexBundleError):
        return 503
    return 400


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"}, status, headers=headers)


def _to_query(body: SearchBody, limits: Limits) -> Query:
    given = [n for n in ("text", "texts", "image", "id") if getattr(body, n) is not None]
    if len(given) != 1:
        raise UsageError(f"send exactly one of text, texts, image or id (got {', '.join(given) or 'none'})")
    image = None
    if body.image is not None:
        if len(body.image) > limits.max_body_bytes:
            raise PayloadTooLargeError(f"the image is over the {limits.max_upload_bytes}-byte limit")
        data = body.image.split(",", 1)[1] if body.image.startswith("data:") else body.image
        try:
            image = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise UnsupportedImageError("image is not valid base64; send the file's bytes base64-encoded") from None
    texts = [body.text] if body.text is not None else body.texts
    return Query(
        texts=texts, image=image, id=body.id, batch=body.texts is not None, bundle=body.bundle, k=body.k,
        metric=body.metric, shortlist=body.shortlist,
    )  # fmt: skip


def _form_int(form: Any, name: str, default: int | None) -> int | None:
    raw = form.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {str(raw)[:40]!r}") from None


async def _form_query(request: Request, limits: Limits) -> Query:
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("image") or form.get("file")
    if upload is None or isinstance(upload, str):
        raise UsageError("a multipart search needs one file field named image")
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise PayloadTooLargeError(f"the upload is over the {limits.max_upload_bytes}-byte limit")
    k = _form_int(form, "k", 10)
    metric, bundle = form.get("metric"), form.get("bundle")
    return Query(
        image=data,
        bundle=str(bundle) if bundle else None,
        k=k if k is not None else 10,
        metric=str(metric) if metric else None,
        shortlist=_form_int(form, "shortlist", None),
    )


async def _read_query(request: Request, limits: Limits) -> Query:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return await _form_query(request, limits)
    if not ctype.startswith("application/json"):
        raise UnsupportedImageError(
            f"send application/json or multipart/form-data, not {ctype or 'a body without a content type'}"
        )
    raw = await request.body()
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError("the request body is not valid JSON") from None
    try:
        body = SearchBody.model_validate(payload)
    except ValidationError as exc:
        raise UsageError(_validation_message(exc.errors())) from None
    return _to_query(body, limits)


def _validation_message(errors: Any) -> str:
    first = list(errors)[0] if errors else {}
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    return f"{where or 'request'}: {first.get('msg', 'invalid')}"


class Guard:
    """ASGI middleware: the bearer token (when set) and the request body size limit."""

    def __init__(self, app: Any, *, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    def _authorised(self, scope: MutableMapping[str, Any]) -> bool:
        if not self.token or scope.get("path") == "/healthz":  # liveness probes carry no token; it tells nothing
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif TOKEN_COOKIE in headers.get("cookie", ""):
            from http.cookies import SimpleCookie

            cookie = SimpleCookie(headers["cookie"]).get(TOKEN_COOKIE)
            given = cookie.value if cookie else ""
        elif scope.get("path") == "/":
            from urllib.parse import parse_qs

            given = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            resp = _error(
                401, "missing or wrong token; send Authorization: Bearer TOKEN", {"WWW-Authenticate": "Bearer"}
            )
            await resp(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _error(413, f"the request body is over the {self.max_body}-byte limit")(scope, receive, send)
            return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise PayloadTooLargeError(f"the request body is over the {self.max_body}-byte limit")
            return message

        await self.app(scope, limited, send)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(DscmrError)
    async def _dscmr(request: Request, exc: DscmrError) -> JSONResponse:
        return _error(_status(exc), str(exc) or type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); this is a bug, please report it")


def _static_dir() -> Any:
    return resources.files("dscmr.serve") / "static"


def create_app(
    state: ServeState,
    *,
    limits: Limits | None = None,
    token: str | None = None,
    watch_interval: float | None = 1.0,
) -> FastAPI:
    """The FastAPI app serving ``state``.

    Args:
        state: The loaded run and bundles.
        limits: Request limits (default :class:`Limits`).
        token: When set, every request needs ``Authorization: Bearer TOKEN``.
        watch_interval: Seconds between checks for bundles changed on disk while the app runs (None: only
            ``POST /api/v1/reload``).
    """
    from contextlib import asynccontextmanager

    limits = limits or Limits()
    thumbs = ThumbnailCache(max_pixels=limits.max_pixels)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if watch_interval:
            state.start_watcher(watch_interval)
        try:
            yield
        finally:
            state.stop_watcher()

    app = FastAPI(
        title="dscmr search",
        summary="Cross-modal search: text -> image and image -> text with a trained DSCMR run.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(Guard, token=token, max_body=limits.max_body_bytes)
    _install_errors(app)
    app.mount("/static", StaticFiles(directory=str(_static_dir())), name="static")
    _add_page_routes(app, state, limits)
    _add_search_routes(app, state, limits)
    _add_item_routes(app, state, thumbs)
    return app


_SEARCH_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"schema": SearchBody.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "bundle": {"type": "string"},
                        "k": {"type": "integer"},
                        "metric": {"type": "string", "enum": list(METRICS)},
                        "shortlist": {"type": "integer"},
                    },
                }
            },
        },
        "required": True,
    }
}


def _add_page_routes(app: FastAPI, state: ServeState, limits: Limits) -> None:
    """``/``, ``/healthz``, ``/api/v1/info``."""

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        page = (_static_dir() / "index.html").read_text(encoding="utf-8")
        resp = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        token = request.query_params.get("token")
        if token:  # the Guard has checked it: keep it for the page's own requests
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return resp

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "bundles": len(state.names)}

    @app.get("/api/v1/info")
    def info() -> dict[str, Any]:
        run = state.run
        return {
            "run": {
                "path": str(run.run_dir),
                "checkpoint_sha256": run.checkpoint_sha256,
                "data_format": run.config.data.format,
                "embed_dim": int(run.model.embed_dim),
                "raw_queries": state.raw,
            },
            "bundles": [lb.info() for lb in state.all()],
            "metrics": list(METRICS),
            "query_kinds": ["text", "texts", "image", "id"] if state.raw else ["id"],
            "limits": limits.to_dict(),
            "encode_slots": state.encode_slots,
        }


def _add_search_routes(app: FastAPI, state: ServeState, limits: Limits) -> None:
    """``/api/v1/search``, ``/api/v1/bundles/{bundle}/examples``, ``/api/v1/reload``."""

    @app.post("/api/v1/search", openapi_extra=_SEARCH_DOC)
    async def search(request: Request) -> dict[str, Any]:
        """Search a bundle with a text, a batch of texts, an image (base64 or upload) or a dataset item id."""
        query = await _read_query(request, limits)
        return await run_in_threadpool(run_query, state, query, limits)

    @app.get("/api/v1/bundles/{bundle}/examples")
    def examples(bundle: str, n: int = 8) -> dict[str, Any]:
        """Dataset item ids to try as ``id`` queries of this bundle."""
        if not 1 <= n <= 100:
            raise UsageError(f"n must be between 1 and 100, got {n}")
        lb = state.get(bundle)
        return {"bundle": bundle, "query_modality": lb.query_modality, "ids": lb.example_ids(n)}

    @app.post("/api/v1/reload")
    def reload() -> dict[str, Any]:
        """Reload every bundle changed on disk (it also happens automatically)."""
        status = state.refresh()
        return {"bundles": status, "versions": {lb.name: lb.version for lb in state.all()}}


def _add_item_routes(app: FastAPI, state: ServeState, thumbs: ThumbnailCache) -> None:
    """``/api/v1/items/{bundle}/{id}`` and its thumbnail."""

    @app.get("/api/v1/items/{bundle}/{item_id}")
    def item(bundle: str, item_id: int = PathParam(ge=0, le=MAX_ID)) -> dict[str, Any]:
        lb = state.get(bundle)
        rec = lb.retriever.bundle.items([item_id])[0]
        if rec is None:
            raise ItemNotFoundError(
                f"bundle {bundle!r} has no item {item_id} (ids run 0..{lb.retriever.bundle.count - 1})"
            )
        image = lb.modality == "image" and rec.kind == "path" and bool(lb.roots)
        return {
            "bundle": bundle,
            "version": lb.version,
            "id": rec.id,
            "item": lb.public_item(rec.item),
            "kind": rec.kind,
            "labels": list(rec.labels) if rec.labels is not None else None,
            "classes": lb.class_names(rec.labels),
            "thumbnail": f"/api/v1/items/{bundle}/{rec.id}/thumbnail" if image else None,
        }

    @app.get("/api/v1/items/{bundle}/{item_id}/thumbnail", response_class=Response)
    def thumbnail(bundle: str, item_id: int = PathParam(ge=0, le=MAX_ID), size: int = 160) -> Response:
        if not 16 <= size <= 512:
            raise UsageError(f"size must be between 16 and 512 pixels, got {size}")
        lb = state.get(bundle)
        rec = lb.retriever.bundle.items([item_id])[0]
        if rec is None:
            raise ItemNotFoundError(f"bundle {bundle!r} has no item {item_id}")
        if lb.modality != "image" or rec.kind != "path":
            raise ItemNotFoundError(f"item {item_id} of bundle {bundle!r} is a {rec.kind}, not an image file")
        path = resolve_inside(rec.item, lb.roots)
        data = thumbs.get((lb.name, lb.version, item_id, size), path)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})
