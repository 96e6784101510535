"""Run the service: check the bind address, load everything once, warm the encoders, hand the app to uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path

from dscmr.errors import UsageError
from dscmr.serve.limits import Limits, encode_slots

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """A non-loopback address is only served with a token.

    Raises:
        UsageError: ``host`` is reachable from other machines and no token is set.
    """
    if not is_loopback(host) and not token:
        raise UsageError(
            f"--host {host} accepts connections from other machines; pass --token T (clients then send "
            "Authorization: Bearer T) or keep the default --host 127.0.0.1"
        )


def check_port(host: str, port: int) -> None:
    """Fail early, before loading anything, when ``host:port`` cannot be bound (in use, or not an address here).

    Raises:
        UsageError: The address cannot be bound.
    """
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None


def serve(
    run: str | Path,
    bundles: list[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    limits: Limits | None = None,
    threads: int = 1,
    max_encodes: int = 0,
    verify: bool = False,
    say: Callable[[str], None] = lambda s: None,
) -> None:
    """Load ``run`` and ``bundles`` and serve them until interrupted (see :mod:`dscmr.serve.app`).

    ``threads`` is the torch and FAISS (OpenMP) thread count of one request: requests run in parallel on a
    thread pool, so 1 avoids oversubscribing the cores. ``max_encodes`` caps the text and image queries that run
    through the encoders at once (0: one per ``threads`` cores); the others wait their turn. ``verify`` checks
    every bundle file's SHA-256 at each load and reload.
    """
    check_bind(host, token)
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    slots = encode_slots(max_encodes, threads=threads)
    check_port(host, port)
    import faiss
    import torch
    import uvicorn

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)

    from dscmr.serve.app import create_app
    from dscmr.serve.state import ServeState

    state = ServeState(run, bundles, verify=verify, encode_slots=slots)
    say(
        f"loaded {len(state.names)} bundle(s): "
        + ", ".join(f"{b.name} ({b.retriever.bundle.count} {b.modality}s)" for b in state.all())
        + f"; {state.encode_slots} query encoding(s) at a time (--max-encodes)"
    )
    state.warm()
    app = create_app(state, limits=limits, token=token)
    say(f"serving on http://{host}:{port}/  (API docs: /docs; stop with Ctrl+C)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
