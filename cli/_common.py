"""Helpers shared by the CLI sub-apps: one-line errors, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from dscmr.errors import DscmrError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USER_ERROR)


def cli_errors(fn: F) -> F:
    """Decorator: turn project errors (and bad-input OS errors) into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
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
