"""The library's one progress protocol: ``progress(done, total, description)``.

Long-running library functions (feature extraction, training, index building, the vision tasks) report how far
they are by calling a :class:`Progress` callable with absolute counts. They never draw anything themselves: the
application decides how to show the reports (the CLI draws rich bars on stderr, ``dscmr.cli._progress``).

A piece of work starts with ``done == 0`` (or a new ``total``) and ends with ``done == total``; the
``description`` may change as it goes (``epoch 3 loss 0.41``). Functions take ``progress: Progress | bool | None``:
a callable gets the reports; ``None`` (the default) or ``True`` reports to the *current* reporter, the one an
application installed with :func:`use_progress` (like a logging handler; :func:`no_progress` when none is); ``False``
reports nowhere. So reports from deep inside (``dscmr train`` -> dataset loading -> image features) reach the
CLI's bars without every layer passing a callback down.

Messages (what was skipped, which step runs) are not progress: they go through :mod:`logging`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    """Receives progress reports: ``done`` of ``total`` units of the work named by ``description``."""

    def __call__(self, done: int, total: int, description: str) -> None: ...


def no_progress(done: int, total: int, description: str) -> None:
    """The default reporter: ignores every report."""


_current: contextvars.ContextVar[Progress] = contextvars.ContextVar("dscmr_progress", default=no_progress)


@contextlib.contextmanager
def use_progress(progress: Progress) -> Iterator[Progress]:
    """Install ``progress`` as the current reporter inside the ``with`` block (applications call this)."""
    token = _current.set(progress)
    try:
        yield progress
    finally:
        _current.reset(token)


def current_progress() -> Progress:
    """The reporter installed by :func:`use_progress`, else :func:`no_progress`."""
    return _current.get()


def resolve_progress(progress: Progress | bool | None) -> Progress:
    """A callable as is; ``None`` or ``True``: the current reporter; ``False``: :func:`no_progress`."""
    if progress is None or progress is True:
        return _current.get()
    if progress is False:
        return no_progress
    return progress


def counter(progress: Progress | bool | None, total: int, description: str) -> Callable[[int], None]:
    """Report ``(0, total)`` now and return ``advance(n)``, which adds ``n`` units done and reports the sum."""
    report = resolve_progress(progress)
    done = 0
    report(0, total, description)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        report(done, total, description)

    return advance


def track(
    items: Iterable[T], description: str, *, total: int | None = None, progress: Progress | bool | None = None
) -> Iterator[T]:
    """Yield ``items``, reporting one unit done after each (``total`` defaults to ``len(items)``)."""
    if total is None:
        total = len(items) if isinstance(items, Sized) else 0
    advance = counter(progress, total, description)
    for item in items:
        yield item
        advance(1)


__all__ = ["Progress", "counter", "current_progress", "no_progress", "resolve_progress", "track", "use_progress"]
