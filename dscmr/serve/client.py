"""A small client of ``dscmr serve``'s API (``dscmr search ... --server URL``): the query goes to a warm server.

Imports nothing heavy (no torch), so a CLI query through a server costs a process start and one HTTP request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dscmr.errors import QueryError, UsageError


def remote_search(
    url: str,
    *,
    modality: str,
    query: str | None,
    query_id: str | None,
    bundle: str | None,
    k: int,
    metric: str | None = None,
    shortlist: int | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Send one search to the server at ``url`` and return its JSON answer.

    Args:
        url: Server base URL, e.g. ``http://127.0.0.1:8080``.
        modality: ``text`` (a sentence or a text id) or ``image`` (an image file on this machine, or an image id).
        query: The sentence or the image file.
        query_id: A dataset item id instead of ``query``.
        bundle: The bundle's name on the server (its folder name); None for the server's default.
        k: Results.
        metric: ``cosine``, ``hamming`` or ``hybrid``.
        shortlist: Hybrid shortlist.
        token: Bearer token (default ``$DSCMR_TOKEN``).
        timeout: Seconds to wait.

    Raises:
        QueryError: The server cannot be reached, or it refused the query (its one-line message).
    """
    import httpx

    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--server takes an http:// or https:// URL, got {url!r}")
    if (query_id is None) == (query is None or not query.strip()):
        raise UsageError("pass either a query or --query-id")
    token = token or os.environ.get("DSCMR_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    fields: dict[str, Any] = {"bundle": bundle, "k": k, "metric": metric, "shortlist": shortlist}
    fields = {n: v for n, v in fields.items() if v is not None}
    endpoint = url.rstrip("/") + "/api/v1/search"
    try:
        if query_id is not None:
            resp = httpx.post(endpoint, json={**fields, "id": query_id}, headers=headers, timeout=timeout)
        elif modality == "text":
            resp = httpx.post(endpoint, json={**fields, "text": query}, headers=headers, timeout=timeout)
        else:
            assert query is not None
            data = Path(query).read_bytes()
            form = {n: str(v) for n, v in fields.items()}
            files = {"image": (Path(query).name, data, "application/octet-stream")}
            resp = httpx.post(endpoint, data=form, files=files, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise QueryError(f"cannot reach the server at {url} ({exc}); start it with `dscmr serve`") from None
    try:
        body = resp.json()
    except ValueError:
        raise QueryError(f"the server at {url} answered {resp.status_code} without JSON; is it dscmr serve?") from None
    if resp.status_code != 200:
        raise QueryError(f"the server refused the query ({resp.status_code}): {body.get('error', body)}")
    return dict(body)
