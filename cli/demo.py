"""``dscmr demo``: the end-to-end demo (owned by the end-to-end issue; a placeholder until it lands)."""

from __future__ import annotations

import typer


def demo_cmd() -> None:
    """Run the end-to-end demo on built-in data."""
    typer.echo("The end-to-end demo is not there yet. Meanwhile try:\n  dscmr train --config configs/wikipedia.toml")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``demo``."""
    app.command("demo")(demo_cmd)
