"""The ``dscmr`` command line: a Typer app whose sub-commands each live in their own module.

Each module exposes ``register(app, bench_app)`` and adds its commands; this file only wires them together.
"""

from __future__ import annotations

import typer

from dscmr.cli import (
    bench_eval,
    bench_features,
    bench_map,
    bench_scale,
    bench_search,
    demo,
    encode,
    export,
    index,
    search,
    serve,
    train,
    vision,
)

app = typer.Typer(
    name="dscmr",
    help="Deep supervised cross-modal retrieval: train, evaluate, index and search images and texts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Benchmarks that print figures (mAP over seeds, comparisons, search speed).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

_MODULES = (
    train,
    encode,
    vision,
    index,
    search,
    serve,
    export,
    bench_map,
    bench_search,
    bench_scale,
    bench_eval,
    bench_features,
    demo,
)
for _module in _MODULES:
    _module.register(app, bench_app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
