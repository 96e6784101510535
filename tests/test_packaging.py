"""The built wheel installs one top-level package, ``dscmr``, with ``dscmr.indexing`` and ``dscmr.cli`` inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_only_the_dscmr_namespace(tmp_path):
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(REPO), str(src)], check=True)
    for link in ("indexing", "cli"):  # the working tree's links, as they would be committed
        assert (REPO / "dscmr" / link).is_symlink(), f"dscmr/{link} must link to the top-level {link}/ folder"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."]
    subprocess.run(cmd, cwd=src, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("dscmr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"dscmr"}, f"top-level names in the wheel: {sorted(top)}"
    assert "dscmr/indexing/bundle.py" in names and "dscmr/cli/main.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dscmr = dscmr.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
