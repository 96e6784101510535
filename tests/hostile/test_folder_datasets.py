"""Hostile folder datasets through the real `dscmr train`: one `error:` line, exit 2, no traceback, no run folder.

Every failing case is caught while the records are read, before any encoder loads, so each takes a process start
(a few seconds). The `skip_bad` cases that then train for real share one folder and one run (marked slow).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from tests.encoders.helpers import save_image, small_records, write_folder
from tests.hostile.conftest import CliResult, assert_clean_error, run_cli

CONFIG = """
[data]
format = "folder"
root = "unused"
image_size = 64
cache_dir = "{cache}"

[model]
img_hidden = [16]
txt_hidden = [16]
common_dim = 8

[train]
epochs = 1
batch_size = 8
patience = 0
threads = 1
"""


def _dataset(tmp_path: Path, *, csv: bool = False) -> tuple[Path, list[dict]]:
    """A valid 16-record folder dataset (12 small PNGs) and its records."""
    records, images = small_records()
    return write_folder(tmp_path / "ds", records, images=images, csv=csv), records


def _write_jsonl(root: Path, records: list[dict]) -> None:
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _train(tmp_path: Path, root: Path, *sets: str, json_out: bool = False) -> CliResult:
    config = tmp_path / "folder.toml"
    config.write_text(CONFIG.format(cache=tmp_path / "cache"))
    args: list[str | Path] = ["train", "--config", config, "--data-root", root, "--out", tmp_path / "run"]
    for s in sets:
        args += ["--set", s]
    return run_cli(*args, *(["--json"] if json_out else []))


def _assert_refused(tmp_path: Path, res: CliResult, *fragments: str) -> None:
    assert_clean_error(res, *fragments)
    assert not (tmp_path / "run").exists(), "a refused dataset must leave no run folder behind"


def _huge_png(path: Path, side: int = 40000) -> Path:
    """A tiny, valid 1-bit PNG whose header declares ``side`` x ``side`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + one bit per pixel
    idat = zlib.compress(row * 16, 9)  # only the first rows: Pillow refuses the size before decoding
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
    path.write_bytes(png + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Escapes: symbolic links, `..`, absolute paths


def test_symlink_to_a_file_outside_is_refused_without_probing_it(tmp_path):
    root, records = _dataset(tmp_path)
    (root / "images" / "passwd.png").symlink_to("/etc/passwd")
    records[0]["image"] = "images/passwd.png"
    _write_jsonl(root, records)
    res = _train(tmp_path, root)
    _assert_refused(tmp_path, res, "line 1", "outside the dataset folder")
    assert "unreadable" not in res.stderr and "not found" not in res.stderr


def test_symlink_to_a_missing_file_outside_says_outside_not_missing(tmp_path):
    root, records = _dataset(tmp_path)
    (root / "images" / "gone.png").symlink_to(tmp_path / "no-such-file.png")
    records[2]["image"] = "images/gone.png"
    _write_jsonl(root, records)
    res = _train(tmp_path, root)
    _assert_refused(tmp_path, res, "line 3", "outside the dataset folder")
    assert "not found" not in res.stderr


def test_symlink_to_a_directory_outside_is_refused(tmp_path):
    root, records = _dataset(tmp_path)
    outside = tmp_path / "elsewhere"
    save_image(outside / "cat.png", seed=3)
    (root / "images" / "linked").symlink_to(outside, target_is_directory=True)
    records[0]["image"] = "images/linked/cat.png"
    _write_jsonl(root, records)
    _assert_refused(tmp_path, _train(tmp_path, root), "outside the dataset folder")


def test_dotdot_path_is_refused_even_with_skip_bad(tmp_path):
    root, records = _dataset(tmp_path)
    records[0]["image"] = "images/../../secret.png"
    _write_jsonl(root, records)
    _assert_refused(tmp_path, _train(tmp_path, root, "data.skip_bad=true"), "escapes the dataset folder")


def test_absolute_image_path_is_refused(tmp_path):
    root, records = _dataset(tmp_path)
    records[0]["image"] = str((root / "images" / "im00.png").resolve())
    _write_jsonl(root, records)
    _assert_refused(tmp_path, _train(tmp_path, root), "escapes the dataset folder")


# ----------------------------------------------------------------------------------------------------------------
# Bad images


def test_decompression_bomb_png_is_a_clean_error(tmp_path):
    root, _ = _dataset(tmp_path)
    _huge_png(root / "images" / "im03.png")
    _assert_refused(tmp_path, _train(tmp_path, root), "im03.png", "decompression bomb")


@pytest.mark.parametrize(
    "content, name",
    [(b"", "zero-byte"), (b"just some text, not a picture\n", "text")],
    ids=["zero-byte", "text-named-jpg"],
)
def test_non_images_are_unreadable(tmp_path, content, name):
    root, records = _dataset(tmp_path)
    (root / "images" / "fake.jpg").write_bytes(content)
    records[4]["image"] = "images/fake.jpg"
    _write_jsonl(root, records)
    _assert_refused(tmp_path, _train(tmp_path, root), "line 5", "fake.jpg", "unreadable")


@pytest.mark.slow
def test_truncated_jpeg_without_skip_bad(tmp_path):
    root, records = _dataset(tmp_path)
    jpg = save_image(root / "images" / "cut.jpg", seed=9, size=(64, 64))
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    records[0]["image"] = "images/cut.jpg"
    _write_jsonl(root, records)
    _assert_refused(tmp_path, _train(tmp_path, root), "line 1", "cut.jpg")


# ----------------------------------------------------------------------------------------------------------------
# Bad captions files


def test_missing_images_folder_lists_the_missing_files(tmp_path):
    root, _ = _dataset(tmp_path)
    for f in (root / "images").iterdir():
        f.unlink()
    (root / "images").rmdir()
    _assert_refused(tmp_path, _train(tmp_path, root), "16 bad record(s)", "not found")


def test_csv_with_missing_columns(tmp_path):
    root, _ = _dataset(tmp_path, csv=True)
    (root / "captions.csv").write_text("image,caption\nimages/im00.png,a red picture\n", encoding="utf-8")
    _assert_refused(tmp_path, _train(tmp_path, root), "lacks column(s) text, labels")


def test_empty_captions_file(tmp_path):
    root, _ = _dataset(tmp_path)
    (root / "captions.jsonl").write_bytes(b"")
    _assert_refused(tmp_path, _train(tmp_path, root), "no usable records")


@pytest.mark.parametrize("labels", [[{"name": "cat"}], [True], 1.5, [""]], ids=["object", "bool", "float", "empty"])
def test_label_that_is_not_a_class_name(tmp_path, labels):
    root, records = _dataset(tmp_path)
    records[1]["labels"] = labels
    _write_jsonl(root, records)
    _assert_refused(tmp_path, _train(tmp_path, root), "line 2", "label")


def test_one_line_not_utf8_names_the_line(tmp_path):
    root, records = _dataset(tmp_path)
    lines = [json.dumps(r).encode() for r in records]
    lines[6] = lines[6].replace(b"picture", b"pict\xff\xfeure")
    (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    res = _train(tmp_path, root)
    _assert_refused(tmp_path, res, "line 7", "not valid UTF-8", "1 bad record(s)")
    assert "byte" not in res.stderr.lower() and "position" not in res.stderr.lower()


def test_json_output_stays_clean_on_error(tmp_path):
    root, records = _dataset(tmp_path)
    records[0]["image"] = "/etc/passwd"
    _write_jsonl(root, records)
    res = _train(tmp_path, root, json_out=True)
    _assert_refused(tmp_path, res, "escapes the dataset folder")
    assert res.stdout == ""


# ----------------------------------------------------------------------------------------------------------------
# skip_bad: the bad records are dropped and counted, the duplicates counted; the run trains


@pytest.mark.slow
def test_skip_bad_drops_and_counts_hostile_records(tmp_path):
    root, records = _dataset(tmp_path)
    (root / "images" / "passwd.png").symlink_to("/etc/passwd")
    _huge_png(root / "images" / "bomb.png")
    extra = [
        {"image": "images/passwd.png", "text": "a symlink out", "labels": ["red"], "split": "train"},
        {"image": "images/bomb.png", "text": "a huge picture", "labels": ["red"], "split": "train"},
    ]
    lines = [json.dumps(r).encode() for r in [*records, *extra, records[5]]]  # the last one: a duplicate row
    lines.insert(3, b'{"image": "images/im02.png", "text": "bad \xff byte", "labels": ["red"]}')
    (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    res = _train(tmp_path, root, "data.skip_bad=true", json_out=True)
    assert res.code == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "skipped 3 bad record(s)" in res.stderr and "1 duplicate row(s)" in res.stderr
    assert json.loads(res.stdout)["split"] == "test"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "skipped 3 bad records; 1 duplicate rows" in metrics["data_source"]
