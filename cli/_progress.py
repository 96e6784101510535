"""The CLI's one progress renderer: the library's ``progress(done, total, description)`` reports as rich bars.

Bars go to stderr, so stdout holds only the command's output (and with ``--json`` only the JSON object, since bars
are then off). ``$DSCMR_PROGRESS`` decides: ``0`` (or ``false``, empty) never draws, ``1`` always draws; unset, bars
are drawn when stderr is a terminal. Every command gets the renderer through :func:`dscmr.cli._common.cli_errors`,
which installs it as the current reporter (:func:`dscmr.utils.progress.use_progress`) for the command's run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from dscmr.utils.progress import Progress, no_progress, use_progress

PROGRESS_ENV = "DSCMR_PROGRESS"  # "0" disables bars, "1" forces them (default: only on a terminal)


def progress_enabled(*, json_out: bool = False) -> bool:
    """Whether to draw bars: never with ``--json``; else ``$DSCMR_PROGRESS`` if set; else whether stderr is a tty."""
    if json_out:
        return False
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        return env.strip().lower() not in ("0", "false", "")
    return sys.stderr.isatty()


class RichProgress:
    """A :class:`~dscmr.utils.progress.Progress` that draws one rich bar per piece of work on stderr.

    A report starts a new bar when ``done`` is 0, when ``done`` goes back, or when ``total`` changes; otherwise
    it moves the current bar and updates its description. Close it (or use it as a context manager) to stop.

    Args:
        console: The rich console to draw on (default: a new one on stderr).
    """

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichBars

        self._bars = RichBars(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: Any = None
        self._done = 0
        self._total = -1
        self._started = False

    def __call__(self, done: int, total: int, description: str) -> None:
        if not self._started:
            self._bars.start()
            self._started = True
        if self._task is None or done == 0 or done < self._done or total != self._total:
            self._task = self._bars.add_task(description, total=total if total > 0 else None, completed=done)
        else:
            self._bars.update(self._task, completed=done, description=description)
        self._done, self._total = done, total

    @property
    def bars(self) -> list[tuple[str, int, float | None]]:
        """``(description, completed, total)`` of every bar drawn so far."""
        return [(t.description, int(t.completed), t.total) for t in self._bars.tasks]

    def close(self) -> None:
        """Stop drawing (the bars stay on screen)."""
        if self._started:
            self._bars.stop()
            self._started = False

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _RateColumn() -> Any:  # noqa: N802 - a factory, so that rich is imported only when bars are drawn
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:7.1f}/s" if speed else "    .../s", style="progress.data.speed")

    return RateColumn()


@contextlib.contextmanager
def cli_progress(*, json_out: bool = False) -> Iterator[Progress]:
    """Install the renderer (or :func:`~dscmr.utils.progress.no_progress` when bars are off) for a command."""
    if not progress_enabled(json_out=json_out):
        with use_progress(no_progress) as p:
            yield p
        return
    with RichProgress() as bars, use_progress(bars) as p:
        yield p
