"""Helpers shared by the CLI sub-apps: one-line errors, messages (logging), progress bars, JSON output.

Every command is wrapped in :func:`cli_errors`, which sets up its run: library messages (``logging`` under
``dscmr``) print on stderr, ``warning:``-prefixed for warnings, only warnings and errors with ``--json``; progress
reports draw rich bars on stderr (:mod:`dscmr.cli._progress`); project errors become one ``error:`` line, exit 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

from dscmr.cli._progress import cli_progress
from dscmr.errors import DscmrError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USER_ERROR)


class _StderrHandler(logging.Handler):
    """Writes each message as one plain line to the *current* ``sys.stderr`` (so rich bars and test runners see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                msg = f"{record.levelname.lower()}: {msg}"
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never break a command
            self.handleError(record)


@contextlib.contextmanager
def cli_logging(*, json_out: bool = False) -> Iterator[None]:
    """Show the library's messages on stderr for a command's run: INFO and up, or WARNING and up with ``--json``.

    The ``dscmr`` logger gets a plain one-line handler and its level for the block; both are restored after.
    """
    logger = logging.getLogger("dscmr")
    handler, level = _StderrHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if json_out else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def cli_errors(fn: F) -> F:
    """Decorator for every command: messages and progress bars set up from its ``json_out`` (``--json``) option,
    and project errors (and bad-input OS errors) turned into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out", False))
        try:
            with cli_logging(json_out=json_out), cli_progress(json_out=json_out):
                return fn(*args, **kwargs)
        except DscmrError as exc:
            raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            raise fail(f"{exc.strerror or exc}: {exc.filename}; check the path") from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (the only thing printed with ``--json``)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
