"""A small items-per-second progress bar (rich, on stderr) that can be switched off."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PROGRESS_ENV = "DSCMR_PROGRESS"  # "0" disables bars, "1" forces them (default: only on a terminal)


def progress_enabled(requested: bool | None = None) -> bool:
    """Whether to draw bars: ``requested`` if given, else ``$DSCMR_PROGRESS``, else whether stderr is a terminal."""
    if requested is not None:
        return requested
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        return env not in ("0", "false", "")
    return sys.stderr.isatty()


@contextmanager
def items_progress(description: str, total: int, *, enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)``; draws ``description  [bar]  done/total  items/s  elapsed``."""
    if not progress_enabled(enabled) or total <= 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:  # type: ignore[no-untyped-def, override]
            speed = task.finished_speed or task.speed
            return Text(f"{speed:7.1f} items/s" if speed else "    ... items/s", style="progress.data.speed")

    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.update(task, advance=n)
