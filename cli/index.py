"""Placeholder: commands for this sub-app are added by their issue."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add this module's commands to the app (none yet)."""
