"""Index bundles: one folder holding everything needed to search one modality of a dataset with one model.

Layout::

    BUNDLE/
      manifest.json   format version, source run (+ checkpoint SHA-256), modality, dim, count, indexes, files
      float.faiss     the float index (faiss.write_index), when built
      binary.faiss    the binary index (faiss.write_index_binary), when built
      hasher.npz      the code projection (sign / itq / learned), with the binary index
      vectors.npy     L2-normalised float vectors for hybrid re-ranking, with the binary index
      items.sqlite    id -> item (path, text or dataset id), labels, source

Writes are atomic at the folder level: a bundle is built (or extended) in a hidden temporary folder beside the
target, every file is fsynced, then the folder is renamed into place. An existing bundle is replaced by renaming
it to a backup, renaming the new folder to the target and deleting the backup; an interrupted swap is rolled back
the next time the path is built or loaded. A crash or a kill therefore never leaves a half bundle at the target,
and never damages the previous one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import IndexBundleError
from dscmr.indexing.binary_index import BinaryIndex
from dscmr.indexing.float_index import FloatIndex
from dscmr.indexing.hashing import LinearHasher
from dscmr.utils.io import atomic_write_json, file_sha256

FORMAT = "dscmr-index-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLOAT_FILE = "float.faiss"
BINARY_FILE = "binary.faiss"
HASHER_FILE = "hasher.npz"
VECTORS_FILE = "vectors.npy"
ITEMS_FILE = "items.sqlite"
MODALITIES = ("image", "text")

_SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,   -- the FAISS id: row number in insertion order
    item TEXT NOT NULL,       -- image path, caption text, or the dataset's item id (feature mode)
    kind TEXT NOT NULL,       -- 'path', 'text' or 'id'
    labels TEXT,              -- JSON list of class indices, NULL when unknown
    source INTEGER NOT NULL   -- index into manifest['sources']
);
"""


@dataclass(frozen=True)
class ItemRecord:
    """One indexed item, as stored in ``items.sqlite``."""

    id: int
    item: str
    kind: str
    labels: tuple[int, ...] | None = None


@dataclass
class IndexBundle:
    """A loaded bundle: manifest, indexes, hasher, memory-mapped vectors and the items table."""

    path: Path
    manifest: dict[str, Any]
    float_index: FloatIndex | None = None
    binary_index: BinaryIndex | None = None
    hasher: LinearHasher | None = None
    vectors: np.ndarray | None = None
    _conn: sqlite3.Connection | None = field(default=None, repr=False)

    @property
    def modality(self) -> str:
        return str(self.manifest["modality"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metrics this bundle can answer: ``cosine`` (float index), ``hamming`` and ``hybrid`` (binary index)."""
        out = []
        if self.float_index is not None:
            out.append("cosine")
        if self.binary_index is not None:
            out.append("hamming")
            if self.vectors is not None:
                out.append("hybrid")
        return tuple(out)

    def items(self, ids: np.ndarray | list[int]) -> list[ItemRecord | None]:
        """Records of ``ids`` (None for -1 or unknown ids), in order."""
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        valid = sorted({i for i in wanted if i >= 0})
        found: dict[int, ItemRecord] = {}
        conn = self._connect()
        for start in range(0, len(valid), 500):
            part = valid[start : start + 500]
            rows = conn.execute(
                f"SELECT id, item, kind, labels FROM items WHERE id IN ({','.join('?' * len(part))})", part
            ).fetchall()
            for rid, item, kind, labels in rows:
                found[rid] = ItemRecord(rid, item, kind, tuple(json.loads(labels)) if labels else None)
        return [found.get(i) for i in wanted]

    def all_items(self) -> list[ItemRecord]:
        """Every record, ordered by id."""
        rows = self._connect().execute("SELECT id, item, kind, labels FROM items ORDER BY id").fetchall()
        return [ItemRecord(r[0], r[1], r[2], tuple(json.loads(r[3])) if r[3] else None) for r in rows]

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = f"file:{self.path / ITEMS_FILE}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ----------------------------------------------------------------------------------------------------------------
# Atomic folder writes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    with contextlib.suppress(OSError):  # directories cannot be opened for fsync on every platform
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(target: Path) -> None:
    """Undo what an interrupted build left beside ``target``: restore a backup whose swap did not finish, and
    delete temporary folders of builds that are no longer running."""
    parent = target.parent
    if not parent.is_dir():
        return
    backups = sorted(parent.glob(f".{target.name}.old-*"))
    if backups and not target.exists():
        os.rename(backups[-1], target)
        backups = backups[:-1]
    for stale in backups:
        shutil.rmtree(stale, ignore_errors=True)
    for tmp in parent.glob(f".{target.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 2)[-2] if tmp.name.count("-") >= 2 else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target``; on success swap it into place, on failure delete it.

    Raises:
        IndexBundleError: ``target`` exists and is not an index bundle (it is never overwritten).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    if target.exists() and not (target / MANIFEST).is_file():
        raise IndexBundleError(f"{target} exists and is not an index bundle; choose another --out or remove it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a bundle gets the usual folder permissions
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(backup)
            os.rename(target, backup)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(backup, target)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Writing


def write_items(
    path: Path, items: list[str], *, kind: str, labels: np.ndarray | None, source: int, first_id: int = 0
) -> None:
    """Create (or append to) the items table in ``path``."""
    new = not path.exists()
    conn = sqlite3.connect(path)
    try:
        with conn:
            if new:
                conn.executescript(_SCHEMA)
            lab = None if labels is None else [json.dumps(np.flatnonzero(row).tolist()) for row in labels]
            rows = (
                (first_id + i, str(it), kind, None if lab is None else lab[i], source) for i, it in enumerate(items)
            )
            conn.executemany("INSERT INTO items (id, item, kind, labels, source) VALUES (?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()


def write_vectors(path: Path, old: np.ndarray | None, new: np.ndarray, *, chunk: int = 1 << 16) -> None:
    """Write ``concat(old, new)`` as ``.npy`` without holding both in memory."""
    n_old = 0 if old is None else old.shape[0]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_old + new.shape[0], new.shape[1]))
    for start in range(0, n_old, chunk):
        stop = min(start + chunk, n_old)
        out[start:stop] = old[start:stop]  # type: ignore[index]
    out[n_old:] = new
    out.flush()
    del out


def file_entries(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each bundle file, for the manifest."""
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": file_sha256(folder / n)} for n in names}


def finish_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record file sizes and hashes and write ``manifest.json``."""
    names = [n for n in (FLOAT_FILE, BINARY_FILE, HASHER_FILE, VECTORS_FILE, ITEMS_FILE) if (folder / n).exists()]
    manifest["files"] = file_entries(folder, names)
    manifest["updated"] = _now()
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Loading


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``'s format and version."""
    mpath = path / MANIFEST
    if not path.is_dir():
        raise IndexBundleError(f"index bundle not found: {path}; build it with `dscmr index build --out {path}`")
    if not mpath.is_file():
        raise IndexBundleError(f"{path} is not an index bundle ({MANIFEST} is missing); rebuild it")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexBundleError(f"{mpath} is corrupt ({exc}); rebuild the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexBundleError(f"{mpath} is not a {FORMAT} manifest; rebuild the bundle")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexBundleError(
            f"{path} has bundle format version {version}, this dscmr reads version {FORMAT_VERSION}; "
            "rebuild it with this version's `dscmr index build`"
        )
    for key in ("modality", "dim", "count", "run", "files"):
        if key not in manifest:
            raise IndexBundleError(f"{mpath} lacks {key!r}; rebuild the bundle")
    return manifest


def check_run(manifest: dict[str, Any], checkpoint_sha256: str, *, path: Path) -> None:
    """The bundle must have been built with the model that will encode the queries."""
    built = manifest["run"].get("checkpoint_sha256")
    if built != checkpoint_sha256:
        raise IndexBundleError(
            f"{path} was built with another model (checkpoint {str(built)[:12]}..., this run's is "
            f"{checkpoint_sha256[:12]}...); search with the run it was built from or rebuild the bundle"
        )


def load_bundle(
    path: str | Path, *, checkpoint_sha256: str | None = None, verify: bool = False, mmap: bool = True
) -> IndexBundle:
    """Load a bundle and check it against its manifest.

    Args:
        path: Bundle folder.
        checkpoint_sha256: When given, the SHA-256 of the querying run's weights; it must match the manifest.
        verify: Also check every file's SHA-256 (reads everything once).
        mmap: Memory-map the float vectors instead of reading them.

    Raises:
        IndexBundleError: Missing or corrupt files, a format version, model, dimension or item-count mismatch.
    """
    path = Path(path)
    recover(path)
    manifest = read_manifest(path)
    if checkpoint_sha256 is not None:
        check_run(manifest, checkpoint_sha256, path=path)
    for name, entry in manifest["files"].items():
        fpath = path / name
        if not fpath.is_file():
            raise IndexBundleError(f"{fpath} is missing; rebuild the bundle")
        if fpath.stat().st_size != entry["bytes"]:
            raise IndexBundleError(
                f"{fpath} has {fpath.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated or "
                "replaced); rebuild the bundle"
            )
        if verify and file_sha256(fpath) != entry["sha256"]:
            raise IndexBundleError(f"{fpath} does not match its SHA-256 in the manifest (corrupt); rebuild the bundle")
    dim, count = int(manifest["dim"]), int(manifest["count"])
    bundle = IndexBundle(path, manifest)
    if manifest.get("float"):
        bundle.float_index = FloatIndex.load(path / FLOAT_FILE, factory=manifest["float"]["factory"], d=dim)
        _check_count(bundle.float_index.ntotal, count, path / FLOAT_FILE)
        if manifest["float"].get("params"):
            bundle.float_index.set_params(**manifest["float"]["params"])
    if manifest.get("binary"):
        b = manifest["binary"]
        bundle.binary_index = BinaryIndex.load(path / BINARY_FILE, factory=b["factory"], bits=int(b["bits"]))
        _check_count(bundle.binary_index.ntotal, count, path / BINARY_FILE)
        bundle.hasher = LinearHasher.load(path / HASHER_FILE)
        if bundle.hasher.bits != int(b["bits"]) or bundle.hasher.d != dim:
            raise IndexBundleError(f"{path / HASHER_FILE} does not match the manifest (bits or dimension); rebuild")
    if manifest.get("vectors"):
        try:
            vec = np.load(path / VECTORS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexBundleError(f"{path / VECTORS_FILE} is truncated or corrupt ({exc}); rebuild") from None
        if vec.ndim != 2 or vec.shape[1] != dim:
            raise IndexBundleError(f"{path / VECTORS_FILE} has shape {vec.shape}, expected (n, {dim}); rebuild")
        _check_count(vec.shape[0], count, path / VECTORS_FILE)
        bundle.vectors = vec
    if bundle.float_index is None and bundle.binary_index is None:
        raise IndexBundleError(f"{path} holds no index; rebuild the bundle")
    try:
        n_items = bundle._connect().execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise IndexBundleError(f"{path / ITEMS_FILE} is not a readable items table ({exc}); rebuild") from None
    _check_count(int(n_items), count, path / ITEMS_FILE)
    return bundle


def _check_count(n: int, count: int, where: Path) -> None:
    if n != count:
        raise IndexBundleError(
            f"{where} holds {n} items, the manifest says {count} (a partial write or a mixed-up file); "
            "rebuild the bundle"
        )
