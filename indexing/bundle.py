"""Index bundles: one folder holding everything needed to search one modality of a dataset with one model.

Layout::

    BUNDLE/
      manifest.json   format version, source run (+ checkpoint SHA-256), modality, dim, count, indexes, files
                      (typed and schema-checked by :class:`dscmr.indexing.manifest.Manifest`)
      float.faiss     the float index (faiss.write_index), when built
      binary.faiss    the binary index (faiss.write_index_binary), when built
      hasher.npz      the code projection (sign / itq / learned), with the binary index
      vectors.npy     L2-normalised float vectors for hybrid re-ranking, with the binary index
      items.sqlite    id -> item (path, text or dataset id), labels, source
      float-00000.faiss, binary-00000.faiss, ...   a sharded bundle's shards (format version 2; float.faiss and
                      binary.faiss then hold the trained, empty index; see :mod:`dscmr.indexing.sharded_index`)

Writes are atomic at the folder level (:mod:`dscmr.indexing.swap`): a bundle is built (or extended) in a hidden
temporary folder beside the target, every file is fsynced, then the folder is renamed into place. An existing
bundle is replaced by renaming it to a backup, renaming the new folder to the target and deleting the backup; an
interrupted swap is rolled back the next time the path is built, or loaded while no writer is alive. A crash or a
kill therefore never leaves a half bundle at the target, and never damages the previous one. Writers of one
bundle hold its lock file (``.BUNDLE.lock`` beside it) across read-modify-swap, so they serialise.

What loading checks:

- always: the manifest's schema and version; that every file it names is a plain name inside the bundle (no
  ``..``, no absolute path, no symlink out); each file's presence and size; that each FAISS index, the hasher,
  the vectors and the items table read and hold ``count`` items of ``dim`` dimensions; the querying model;
- with ``verify=True`` (``--verify``) also every file's SHA-256 against the manifest, which catches content
  changed at the same size (an edited ``items.sqlite``, zeroed vectors, a wrong hash in the manifest).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dscmr.errors import IndexBundleError
from dscmr.indexing.binary_index import BinaryIndex
from dscmr.indexing.float_index import FloatIndex
from dscmr.indexing.hashing import LinearHasher
from dscmr.indexing.hybrid import refine_search
from dscmr.indexing.manifest import (
    BINARY_FILE,
    BUNDLE_FILES,
    FLOAT_FILE,
    FORMAT,
    FORMAT_VERSION,
    HASHER_FILE,
    ITEMS_FILE,
    MANIFEST,
    MODALITIES,
    VECTORS_FILE,
    FileEntry,
    Manifest,
    bundle_file,
    read_manifest,
)
from dscmr.indexing.sharded_index import load_sharded_binary, load_sharded_float
from dscmr.indexing.swap import last_complete, lock_path, probe_writer, recover, staging_dir
from dscmr.indexing.vector_file import VectorFile
from dscmr.utils.io import atomic_write_json, file_sha256

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
    """A loaded bundle: manifest, indexes, hasher, memory-mapped vectors and the items table.

    Attributes:
        path: The bundle folder.
        manifest: Its typed manifest.
        folder: Where the files were read: ``path``, or the previous version's backup when a writer was between
            its two renames at load time.
    """

    path: Path
    manifest: Manifest
    float_index: FloatIndex | None = None
    binary_index: BinaryIndex | None = None
    hasher: LinearHasher | None = None
    vectors: np.ndarray | None = None
    vector_file: VectorFile | None = None  # the same vectors, read by positional reads (memory-mapped loads)
    folder: Path | None = None
    _conn: sqlite3.Connection | None = field(default=None, repr=False)

    @property
    def modality(self) -> str:
        return self.manifest.modality

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def count(self) -> int:
        return self.manifest.count

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

    def shortlist_for(self, k: int) -> int:
        """The default hybrid shortlist k' for ``k`` results (the manifest's, or the computed rule)."""
        return self.manifest.search_defaults().shortlist_for(k, self.count)

    def refine_for(self, k: int) -> int | None:
        """The default k' a lossy float index returns for exact re-ranking to ``k``; None: cosine does not re-rank."""
        if self.float_index is None or self.vectors is None:
            return None
        return self.manifest.search_defaults().refine_for(k, self.count)

    def search_cosine(self, xq: np.ndarray, k: int, *, shortlist: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine search of the float index; a lossy one (PQ, SQ) stored with vectors re-ranks its top k' exactly.

        Args:
            xq: Query embeddings ``(nq, d)``.
            k: Results per query.
            shortlist: k' to re-rank (default: the manifest's ``refine``); ignored when the index does not re-rank.

        Returns:
            ``(D, I)``: cosine similarities descending and ids, as :meth:`FloatIndex.search`.
        """
        assert self.float_index is not None
        kp = self.refine_for(k)
        if kp is None:
            return self.float_index.search(xq, k)
        rows = self.vector_file if self.vector_file is not None else self.vectors
        assert rows is not None
        return refine_search(self.float_index, rows, xq, k, shortlist=kp if shortlist is None else shortlist)

    def summary(self) -> dict[str, Any]:
        """What ``dscmr index build/add/info --json`` prints: path, modality, size, indexes, total bytes and the
        default search settings (hybrid shortlist, nprobe, refine k′ for k = 10)."""
        m = self.manifest
        binary = m.binary
        return {
            "bundle": str(self.path),
            "modality": m.modality,
            "count": m.count,
            "dim": m.dim,
            "metrics": list(self.metrics),
            "float": m.float.factory if m.float else None,
            "binary": {"method": binary.method, "bits": binary.bits, "factory": binary.factory} if binary else None,
            "bytes": m.bytes,
            "search": m.search_defaults().to_dict(),
            **({"shards": [s.count for s in m.shards]} if m.shards is not None else {}),
        }

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
            uri = f"file:{(self.folder or self.path) / ITEMS_FILE}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._conn

    def close(self) -> None:
        if self.vector_file is not None:
            self.vector_file.close()
            self.vector_file = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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


def now() -> str:
    """The current UTC time as the manifest writes it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_entries(folder: Path, names: list[str]) -> dict[str, FileEntry]:
    """Size and SHA-256 of each bundle file, for the manifest."""
    return {n: FileEntry(bytes=(folder / n).stat().st_size, sha256=file_sha256(folder / n)) for n in names}


def finish_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Record file sizes and hashes, size the search defaults from the count, and write ``manifest.json``."""
    names = [n for n in BUNDLE_FILES if (folder / n).exists()]
    names += [n for shard in manifest.shards or () for n in shard.files()]
    done = replace(manifest.with_search_defaults(), files=file_entries(folder, names), updated=now())
    atomic_write_json(folder / MANIFEST, done.to_dict())
    return done


# ----------------------------------------------------------------------------------------------------------------
# Loading

_READ_ATTEMPTS = 10  # while a writer is alive, a read that raced its swap is retried this many times


def check_run(manifest: Manifest, checkpoint_sha256: str, *, path: Path) -> None:
    """The bundle must have been built with the model that will encode the queries."""
    built = manifest.run.checkpoint_sha256
    if built != checkpoint_sha256:
        raise IndexBundleError(
            f"{path} was built with another model (checkpoint {str(built)[:12]}..., this run's is "
            f"{checkpoint_sha256[:12]}...); search with the run it was built from or rebuild the bundle"
        )


def load_bundle(
    path: str | Path, *, checkpoint_sha256: str | None = None, verify: bool = False, mmap: bool = True
) -> IndexBundle:
    """Load a bundle and check it against its manifest.

    When no writer holds the bundle's lock, an interrupted swap is rolled back first (:func:`recover`). While a
    writer is alive nothing is renamed: the last complete version is read, and read again if the writer's swap
    replaced it meanwhile.

    Args:
        path: Bundle folder.
        checkpoint_sha256: When given, the SHA-256 of the querying run's weights; it must match the manifest.
        verify: Also check every file's SHA-256 (reads everything once).
        mmap: Memory-map the FAISS indexes (where FAISS can map the index type: Flat, IVF, BFlat, BIVF) and the
            float vectors read-only instead of reading them into RAM. A writer replaces files by rename, so a
            mapped file stays valid for this reader after a swap.

    Raises:
        IndexBundleError: Missing or corrupt files, a format version, model, dimension or item-count mismatch.
    """
    path = Path(path)
    for attempt in range(_READ_ATTEMPTS):
        with probe_writer(path) as no_writer:
            if no_writer:
                recover(path)
                return _load(path, path, checkpoint_sha256=checkpoint_sha256, verify=verify, mmap=mmap)
        folder = last_complete(path)
        try:
            bundle = _load(path, folder, checkpoint_sha256=checkpoint_sha256, verify=verify, mmap=mmap)
            if _unchanged(folder, bundle.manifest):
                return bundle
            bundle.close()
        except (IndexBundleError, OSError):
            if attempt == _READ_ATTEMPTS - 1:
                raise
        time.sleep(0.05 * (attempt + 1))
    raise IndexBundleError(f"{path} kept changing while it was read (a writer is busy with it); try again")


def peek_manifest(path: str | Path) -> Manifest:
    """The manifest of the last complete version of a bundle, without loading its indexes or renaming anything.

    Raises:
        IndexBundleError: No bundle there, or its manifest fails the schema.
    """
    path = Path(path)
    for attempt in range(_READ_ATTEMPTS):
        try:
            return read_manifest(last_complete(path))
        except IndexBundleError:
            if attempt == _READ_ATTEMPTS - 1 or not (path.parent.is_dir() and lock_path(path).exists()):
                return read_manifest(path)  # the error about ``path`` itself
        time.sleep(0.05 * (attempt + 1))
    return read_manifest(path)


def _unchanged(folder: Path, manifest: Manifest) -> bool:
    """Whether ``folder`` still holds the manifest that was loaded (no swap happened during the read)."""
    try:
        return read_manifest(folder) == manifest
    except IndexBundleError:
        return False


def _check_files(folder: Path, manifest: Manifest, *, verify: bool) -> None:
    """Every listed file inside the folder, present, of the recorded size (and SHA-256 with ``verify``)."""
    for name, entry in manifest.files.items():
        fpath = bundle_file(folder, name)
        if not fpath.is_file():
            raise IndexBundleError(f"{fpath} is missing; rebuild the bundle")
        size = fpath.stat().st_size
        if size != entry.bytes:
            raise IndexBundleError(
                f"{fpath} has {size} bytes, the manifest says {entry.bytes} (truncated or replaced); rebuild the bundle"
            )
        if verify and file_sha256(fpath) != entry.sha256:
            raise IndexBundleError(f"{fpath} does not match its SHA-256 in the manifest (corrupt); rebuild the bundle")


def _load(path: Path, folder: Path, *, checkpoint_sha256: str | None, verify: bool, mmap: bool) -> IndexBundle:
    """Read the bundle files in ``folder`` (``path`` or its backup) and check them against the manifest."""
    manifest = read_manifest(folder) if folder == path else _read_backup_manifest(path, folder)
    if checkpoint_sha256 is not None:
        check_run(manifest, checkpoint_sha256, path=path)
    _check_files(folder, manifest, verify=verify)
    m = manifest
    bundle = IndexBundle(path, manifest, folder=folder)
    if m.float is not None:
        if m.shards is not None:
            bundle.float_index = load_sharded_float(folder, m, mmap=mmap)
        else:
            bundle.float_index = FloatIndex.load(folder / FLOAT_FILE, factory=m.float.factory, d=m.dim, mmap=mmap)
        _check_count(bundle.float_index.ntotal, m.count, folder / FLOAT_FILE)
        nprobe = m.search_defaults().nprobe
        params = {**({"nprobe": float(nprobe)} if nprobe is not None else {}), **m.float.params}
        if params:
            bundle.float_index.set_params(**params)
    if m.binary is not None:
        if m.shards is not None:
            bundle.binary_index = load_sharded_binary(folder, m, mmap=mmap)
        else:
            bundle.binary_index = BinaryIndex.load(
                folder / BINARY_FILE, factory=m.binary.factory, bits=m.binary.bits, mmap=mmap
            )
        _check_count(bundle.binary_index.ntotal, m.count, folder / BINARY_FILE)
        bundle.hasher = LinearHasher.load(folder / HASHER_FILE)
        if bundle.hasher.bits != m.binary.bits or bundle.hasher.d != m.dim:
            raise IndexBundleError(f"{folder / HASHER_FILE} does not match the manifest (bits or dimension); rebuild")
    if m.has_vectors:
        bundle.vectors = _load_vectors(folder / VECTORS_FILE, m, mmap=mmap)
    if bundle.float_index is None and bundle.binary_index is None:
        raise IndexBundleError(f"{path} holds no index; rebuild the bundle")
    try:
        n_items = bundle._connect().execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        bundle.close()
        raise IndexBundleError(f"{folder / ITEMS_FILE} is not a readable items table ({exc}); rebuild") from None
    _check_count(int(n_items), m.count, folder / ITEMS_FILE)
    if mmap and bundle.refine_for(1) is not None:
        bundle.vector_file = VectorFile(folder / VECTORS_FILE)  # refine reads its rows unmapped (vector_file.py)
    return bundle


def _read_backup_manifest(path: Path, folder: Path) -> Manifest:
    if not folder.is_dir():
        raise IndexBundleError(f"index bundle not found: {path}; build it with `dscmr index build --out {path}`")
    return read_manifest(folder)


def _load_vectors(vpath: Path, m: Manifest, *, mmap: bool) -> np.ndarray:
    try:
        vec = np.load(vpath, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexBundleError(f"{vpath} is truncated or corrupt ({exc}); rebuild") from None
    if vec.ndim != 2 or vec.shape[1] != m.dim:
        raise IndexBundleError(f"{vpath} has shape {vec.shape}, expected (n, {m.dim}); rebuild")
    _check_count(vec.shape[0], m.count, vpath)
    return vec


def _check_count(n: int, count: int, where: Path) -> None:
    if n != count:
        raise IndexBundleError(
            f"{where} holds {n} items, the manifest says {count} (a partial write or a mixed-up file); "
            "rebuild the bundle"
        )


__all__ = [
    "BINARY_FILE",
    "FLOAT_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "HASHER_FILE",
    "ITEMS_FILE",
    "MANIFEST",
    "MODALITIES",
    "VECTORS_FILE",
    "IndexBundle",
    "ItemRecord",
    "check_run",
    "file_entries",
    "finish_manifest",
    "load_bundle",
    "now",
    "peek_manifest",
    "read_manifest",
    "recover",
    "staging_dir",
    "write_items",
    "write_vectors",
]
