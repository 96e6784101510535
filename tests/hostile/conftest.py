"""Hostile-input suite: every case runs the real `dscmr` command and expects one clean `error:` line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

DSCMR = [sys.executable, "-m", "dscmr.cli.main"]


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run `dscmr ARGS...` in a fresh process (one torch thread, no progress bars)."""
    full_env = {**os.environ, "DSCMR_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [*DSCMR, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_clean_error(res: CliResult, *fragments: str) -> None:
    """Exit 2, exactly one `error:` line on stderr that names every fragment, and no traceback anywhere."""
    out = res.stdout + res.stderr
    assert res.code == 2, f"exit {res.code}, expected 2:\n{out}"
    assert "Traceback" not in out, out
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one error line:\n{res.stderr}"
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), f"{fragment!r} not in {errors[0]!r}"


@pytest.fixture
def cli():
    return run_cli
