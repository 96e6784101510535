"""The typed manifest: a round trip through JSON, and schema checks that refuse bad fields before any file use."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from dscmr.errors import IndexBundleError
from dscmr.indexing.manifest import Manifest, bundle_file, read_manifest

SHA = "ab" * 32

GOOD = {
    "format": "dscmr-index-bundle",
    "format_version": 1,
    "created": "2026-01-01T00:00:00+00:00",
    "run": {"path": "runs/x", "checkpoint_sha256": SHA, "embed_dim": 16, "hash_bits": 0, "data_format": "npz"},
    "modality": "image",
    "dim": 16,
    "count": 3,
    "metrics": ["cosine", "hamming", "hybrid"],
    "float": {"file": "float.faiss", "factory": "Flat", "metric": "cosine", "ntotal": 3, "params": {}},
    "binary": {
        "method": "itq",
        "bits": 16,
        "factory": "BFlat",
        "metric": "hamming",
        "file": "binary.faiss",
        "hasher": "hasher.npz",
    },  # fmt: skip
    "vectors": {"file": "vectors.npy", "normalized": True},
    "items": {"file": "items.sqlite", "kind": "id"},
    "classes": ["a", "b"],
    "sources": [{"data": {"format": "npz", "root": "x.npz"}, "split": "test", "first_id": 0, "count": 3}],
    "files": {
        name: {"bytes": 10, "sha256": SHA}
        for name in ("float.faiss", "binary.faiss", "hasher.npz", "vectors.npy", "items.sqlite")
    },
    "updated": "2026-01-01T00:00:01+00:00",
}


def test_round_trip_is_exact() -> None:
    m = Manifest.from_dict(copy.deepcopy(GOOD))
    assert m.modality == "image" and m.count == 3 and m.binary is not None and m.binary.bits == 16
    assert m.sources[0].split == "test" and m.run.checkpoint_sha256 == SHA and m.has_vectors
    assert m.to_dict() == GOOD
    assert Manifest.from_dict(m.to_dict()) == m


def _with(path: str, value: object) -> dict:
    d = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target = d
    for p in parents:
        target = target[p]
    target[last] = value
    return d


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("count", "abc", "'count' must be an integer"),
        ("count", -1, "'count' must be an integer >= 0"),
        ("count", True, "'count' must be an integer"),
        ("dim", 0, "'dim' must be an integer >= 1"),
        ("modality", "audio", "must be one of image, text"),
        ("run", "x", "'run' must be a JSON object"),
        ("run", {}, "lacks 'run.checkpoint_sha256'"),
        ("files", ["float.faiss"], "'files' must be a JSON object"),
        ("files", {"../../../../etc/passwd": {"bytes": 1, "sha256": SHA}}, "not a file of the bundle layout"),
        ("files", {"/etc/passwd": {"bytes": 1, "sha256": SHA}}, "not a file of the bundle layout"),
        ("files.float.faiss", {"bytes": "1", "sha256": SHA}, "must be an integer"),
        ("binary.bits", 12, "multiple of 8"),
        ("binary.method", "md5", "must be one of sign, itq, learned"),
        ("float.params", {"efSearch": "x"}, "must be a number"),
        ("items.kind", "blob", "must be one of path, text, id"),
        ("metrics", ["dot"], "must list only"),
        ("format_version", 3, "format version 3"),
        ("format", "other", "not a dscmr-index-bundle manifest"),
    ],
)
def test_bad_fields_are_refused(path: str, value: object, message: str) -> None:
    data = _with(path, value) if "." not in path or path.split(".")[0] != "files" else copy.deepcopy(GOOD)
    if path.startswith("files."):
        data["files"]["float.faiss"] = value
    with pytest.raises(IndexBundleError, match=message.replace("(", r"\(")):
        Manifest.from_dict(data)


def test_a_needed_file_must_be_listed() -> None:
    d = copy.deepcopy(GOOD)
    del d["files"]["hasher.npz"]
    with pytest.raises(IndexBundleError, match="does not list hasher.npz"):
        Manifest.from_dict(d)


def test_bundle_file_refuses_symlinks_out(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "float.faiss").symlink_to(tmp_path / "outside")
    with pytest.raises(IndexBundleError, match="outside the bundle folder"):
        bundle_file(tmp_path / "b", "float.faiss")
    assert bundle_file(tmp_path / "b", "items.sqlite") == tmp_path / "b" / "items.sqlite"


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(IndexBundleError, match="not found"):
        read_manifest(tmp_path / "none")
    (tmp_path / "b").mkdir()
    with pytest.raises(IndexBundleError, match="manifest.json is missing"):
        read_manifest(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("[1]")
    with pytest.raises(IndexBundleError, match="not a dscmr-index-bundle manifest"):
        read_manifest(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(GOOD)[:-3])
    with pytest.raises(IndexBundleError, match="corrupt"):
        read_manifest(tmp_path / "b")
