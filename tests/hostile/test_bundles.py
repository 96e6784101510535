"""Hostile bundles: damaged manifests, escaping file names, corrupt files. Each case copies one good bundle, damages
the copy, runs the real `dscmr` command and expects one clean `error:` line, exit 2, and the copy left as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile.conftest import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny run and one image bundle (float Flat + itq 16 bits + vectors) of its test split."""
    from dscmr.indexing import BuildSpec, build_from_run
    from tests.indexing.conftest import make_tiny_run

    tmp = tmp_path_factory.mktemp("hostile_bundles")
    run = make_tiny_run(tmp, epochs=2)
    build_from_run(run, tmp / "good", modality="image", spec=BuildSpec(binary="itq", bits=16))
    return run, tmp / "good"


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry of the bundle's parent (hidden temporary folders included) -> a digest of its content; the
    writer-lock file beside a bundle (empty, created on first use) is not part of it."""
    out = {}
    for p in sorted(folder.parent.iterdir()):
        if p.is_symlink() or not p.is_dir():
            if not p.name.endswith(".lock"):
                out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
            continue
        for f in sorted(p.iterdir()):
            out[f"{p.name}/{f.name}"] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
    return out


def _damaged(good: tuple[Path, Path], tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(good[1], b)
    damage(b)
    return b


def _edit_manifest(**changes: object) -> Callable[[Path], None]:
    def damage(b: Path) -> None:
        m = json.loads((b / "manifest.json").read_text())
        for key, value in changes.items():
            target = m
            *parents, last = key.split("/")
            for p in parents:
                target = target[p]
            target[last] = value
        (b / "manifest.json").write_text(json.dumps(m))

    return damage


def _search(run: Path, bundle: Path, *extra: str):
    return run_cli("search", "text", "--query-id", "190", "--run", run, "--index", bundle, "-k", "3", *extra)


def _outside_files(b: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["../../../../etc/passwd"] = {"bytes": 1, "sha256": "0" * 64}
    (b / "manifest.json").write_text(json.dumps(m))


def _absolute_files(b: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["files"] = {"/etc/passwd": {"bytes": 1, "sha256": "0" * 64}}
    (b / "manifest.json").write_text(json.dumps(m))


def _symlink_out(b: Path) -> None:
    outside = b.parent / "outside.faiss"
    shutil.copyfile(b / "float.faiss", outside)
    (b / "float.faiss").unlink()
    (b / "float.faiss").symlink_to(outside)


def _zero(name: str) -> Callable[[Path], None]:
    def damage(b: Path) -> None:
        n = (b / name).stat().st_size
        (b / name).write_bytes(b"\0" * n)

    return damage


def _truncate(b: Path) -> None:
    data = (b / "binary.faiss").read_bytes()
    (b / "binary.faiss").write_bytes(data[: len(data) // 2])


def _edit_items(b: Path) -> None:
    """Change one item's text in place: same file size, other content."""
    conn = sqlite3.connect(b / "items.sqlite")
    with conn:
        item = conn.execute("SELECT item FROM items WHERE id = 0").fetchone()[0]
        conn.execute("UPDATE items SET item = ? WHERE id = 0", ("X" * len(item),))
    conn.close()
    m = json.loads((b / "manifest.json").read_text())
    assert (b / "items.sqlite").stat().st_size == m["files"]["items.sqlite"]["bytes"]


def _wrong_sha(b: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["hasher.npz"]["sha256"] = "f" * 64
    (b / "manifest.json").write_text(json.dumps(m))


CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...], tuple[str, ...]]] = {
    # name: (damage, extra args, fragments of the error line)
    "count_not_int": (_edit_manifest(count="abc"), (), ("'count' must be an integer",)),
    "files_a_list": (_edit_manifest(files=["float.faiss"]), (), ("'files' must be a JSON object",)),
    "run_a_string": (_edit_manifest(run="x"), (), ("'run' must be a JSON object",)),
    "modality_audio": (_edit_manifest(modality="audio"), (), ("'modality' must be one of image, text",)),
    "bits_not_multiple_of_8": (_edit_manifest(**{"binary/bits": 12}), (), ("multiple of 8",)),
    "params_not_numbers": (_edit_manifest(**{"float/params": {"efSearch": "x"}}), (), ("must be a number",)),
    "version_99": (_edit_manifest(format_version=99), (), ("format version 99",)),
    "files_escape_with_dotdot": (_outside_files, (), ("not a file of the bundle layout",)),
    "files_absolute_path": (_absolute_files, (), ("not a file of the bundle layout",)),
    "symlink_out_of_the_bundle": (_symlink_out, (), ("outside the bundle folder",)),
    "manifest_not_json": (lambda b: (b / "manifest.json").write_text("{not json"), (), ("corrupt",)),
    "manifest_a_list": (lambda b: (b / "manifest.json").write_text("[1]"), (), ("not a dscmr-index-bundle",)),
    "manifest_missing": (lambda b: (b / "manifest.json").unlink(), (), ("manifest.json is missing",)),
    "items_missing": (lambda b: (b / "items.sqlite").unlink(), (), ("items.sqlite is missing",)),
    "binary_truncated": (_truncate, (), ("binary.faiss has", "truncated")),
    "float_zeroed_same_size": (_zero("float.faiss"), (), ("float.faiss", "not a FAISS index")),
    "vectors_zeroed_verify": (_zero("vectors.npy"), ("--verify",), ("vectors.npy", "SHA-256")),
    "items_edited_verify": (_edit_items, ("--verify",), ("items.sqlite", "SHA-256")),
    "wrong_sha_in_manifest_verify": (_wrong_sha, ("--verify",), ("hasher.npz", "SHA-256")),
    "another_model": (_edit_manifest(**{"run/checkpoint_sha256": "e" * 64}), (), ("another model",)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_bundle_is_a_clean_error(good: tuple[Path, Path], tmp_path: Path, name: str) -> None:
    damage, extra, fragments = CASES[name]
    b = _damaged(good, tmp_path, damage)
    before = _snapshot(b)
    assert_clean_error(_search(good[0], b, *extra), *fragments)
    assert _snapshot(b) == before


def test_edited_items_pass_without_verify(good: tuple[Path, Path], tmp_path: Path) -> None:
    """Documented limit: content changed at the same size is caught only with --verify (README)."""
    b = _damaged(good, tmp_path, _edit_items)
    res = _search(good[0], b, "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["hits"]


def test_add_verify_refuses_a_corrupt_bundle(good: tuple[Path, Path], tmp_path: Path) -> None:
    b = _damaged(good, tmp_path, _zero("vectors.npy"))
    before = _snapshot(b)
    res = run_cli("index", "add", "--bundle", b, "--run", good[0], "--split", "val", "--verify")
    assert_clean_error(res, "SHA-256")
    assert _snapshot(b) == before


def test_add_to_a_damaged_manifest(good: tuple[Path, Path], tmp_path: Path) -> None:
    b = _damaged(good, tmp_path, _edit_manifest(count=-3))
    before = _snapshot(b)
    res = run_cli("index", "add", "--bundle", b, "--run", good[0], "--split", "val")
    assert_clean_error(res, "'count' must be an integer >= 0")
    assert _snapshot(b) == before


def test_build_over_a_folder_that_is_not_a_bundle(good: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keep.txt").write_text("keep")
    before = _snapshot(tmp_path / "docs")
    res = run_cli("index", "build", "--run", good[0], "--modality", "image", "--out", tmp_path / "docs")
    assert_clean_error(res, "not an index bundle")
    assert _snapshot(tmp_path / "docs") == before
    assert not any(p.name.startswith(".docs.tmp") for p in tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_manifest(good: tuple[Path, Path], tmp_path: Path) -> None:
    b = _damaged(good, tmp_path, lambda b: (b / "manifest.json").chmod(0))
    assert_clean_error(_search(good[0], b), "manifest.json")
