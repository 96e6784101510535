"""What a running ``dscmr serve`` holds: one run, its encoders, and one immutable version of each bundle.

A :class:`LoadedBundle` is never changed after it is made. A request takes the current version of its bundle once,
at its start, and uses only that object, so a reload that swaps in a new version (``dscmr index add`` or ``dscmr
index build`` replaced the folder) never shows a request half of each: requests in flight finish on the old
version, later ones see the new one. The old version's files stay readable after the swap (its FAISS indexes are in
memory; the vectors' memory map and the items database keep their open file handles).

Reloads go through :func:`dscmr.indexing.bundle.load_bundle`, which follows the bundle reader rules: it never reads
a bundle mid-swap and never recovers one whose writer is still running. A reload that fails (a writer is busy, the
folder is missing for a moment) keeps the old version and is retried at the next check.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, TypeVar

from dscmr.errors import DscmrError, QueryError, UsageError
from dscmr.indexing.bundle import MANIFEST
from dscmr.indexing.from_run import as_run, raw_formats
from dscmr.indexing.retriever import Retriever
from dscmr.serve.limits import encode_slots as resolve_encode_slots
from dscmr.train import LoadedRun

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownBundleError(QueryError):
    """A request names a bundle the server has not loaded."""


def manifest_value(manifest: Any, key: str, default: Any = None) -> Any:
    """``key`` of a bundle manifest, whether it is a plain dict or a typed object."""
    if isinstance(manifest, dict):
        return manifest.get(key, default)
    return getattr(manifest, key, default)


def bundle_signature(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a bundle is swapped or extended: the folder's and the manifest's inode and mtime.

    None while the folder is missing (a writer is between its two renames).
    """
    try:
        d = os.stat(path)
        m = os.stat(path / MANIFEST)
    except OSError:
        return None
    return (d.st_ino, m.st_ino, m.st_mtime_ns, m.st_size)


def dataset_roots(manifest: Any) -> tuple[Path, ...]:
    """The dataset folders a bundle's items came from (image items must resolve inside one of them)."""
    roots: list[Path] = []
    for source in manifest_value(manifest, "sources") or []:
        data = source.get("data") if isinstance(source, dict) else getattr(source, "data", None)
        if not isinstance(data, Mapping):
            continue
        fmt, root = data.get("format"), str(data.get("root") or "")
        if fmt == "folder" and root:
            roots.append(Path(root).expanduser().resolve())
        elif fmt in ("shapes", "digits"):
            from dscmr.data.builtin import builtin_folder

            roots.append(builtin_folder(str(fmt), str(data.get("cache_dir") or "")).resolve())
    return tuple(dict.fromkeys(roots))


@dataclass
class LoadedBundle:
    """One loaded version of one bundle (treat as immutable; a reload makes a new one)."""

    name: str
    path: Path
    retriever: Retriever
    signature: tuple[int, int, int, int] | None
    version: int
    loaded_at: float
    roots: tuple[Path, ...]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _labels: dict[tuple[str, str], tuple[int, ...]] | None = field(default=None, repr=False)

    @property
    def modality(self) -> str:
        return self.retriever.bundle.modality

    @property
    def query_modality(self) -> str:
        return self.retriever.query_modality

    @property
    def classes(self) -> tuple[str, ...] | None:
        names = manifest_value(self.retriever.bundle.manifest, "classes")
        return tuple(names) if names else None

    def class_names(self, labels: tuple[int, ...] | None) -> list[str]:
        names = self.classes
        if labels is None:
            return []
        return [names[i] if names and 0 <= i < len(names) else str(i) for i in labels]

    def public_item(self, item: str) -> str:
        """What a client sees of an item: an image path relative to its dataset folder, never a server path."""
        if self.modality != "image" or not PurePath(item).is_absolute():
            return item
        for root in self.roots:
            if PurePath(item).is_relative_to(root):
                return PurePath(item).relative_to(root).as_posix()
        return PurePath(item).name

    def dataset(self) -> Any:
        """The dataset id queries are looked up in (loaded once, on first use)."""
        with self._lock:
            return self.retriever.dataset()

    def query_labels(self, modality: str, item: str) -> tuple[int, ...] | None:
        """Class indices of dataset item ``item`` of ``modality`` (None when it is not a dataset item)."""
        if self._labels is None:
            try:
                ds = self.dataset()
            except DscmrError:
                return None
            table: dict[tuple[str, str], tuple[int, ...]] = {}
            for name in ("test", "val", "train"):
                sp = ds.split(name)
                for mod, names in (("image", sp.img_items), ("text", sp.txt_items)):
                    for row, it in enumerate(names or ()):
                        key = (mod, str(it))
                        if key not in table:
                            table[key] = tuple(int(j) for j in sp.labels[row].nonzero()[0])
            self._labels = table
        return self._labels.get((modality, item))

    def example_ids(self, n: int) -> list[str]:
        """Up to ``n`` dataset item ids usable as ``id`` queries of this bundle (test split first)."""
        ds = self.dataset()
        out: list[str] = []
        for name in ("test", "val", "train"):
            sp = ds.split(name)
            names = sp.txt_items if self.query_modality == "text" else sp.img_items
            out.extend(str(x) for x in (names or ())[: n - len(out)])
            if len(out) >= n:
                break
        return list(dict.fromkeys(out))

    def info(self) -> dict[str, Any]:
        b = self.retriever.bundle
        return {
            "name": self.name,
            "modality": self.modality,
            "query_modality": self.query_modality,
            "count": b.count,
            "dim": b.dim,
            "metrics": list(b.metrics),
            "default_metric": self.retriever.default_metric(),
            "version": self.version,
            "updated": manifest_value(b.manifest, "updated"),
            "classes": list(self.classes or ()),
        }


class ServeState:
    """The run and the current version of every bundle; reloads swap versions atomically.

    Raw text and image queries run through the run's encoders on ``encode_slots`` threads of their own
    (:meth:`encode`); the requests beyond that wait their turn. On a CPU more encodings at once would only share the
    same cores, and every thread that runs the encoders keeps its own working memory, so the server's memory would
    grow with the number of clients.

    Args:
        run: Run folder or loaded run.
        bundles: Bundle folders; each is served under its folder name.
        verify: Check every bundle file's SHA-256 against its manifest at each load and reload.
        encode_slots: Query encodings that may run at once (0: one per core, :func:`~dscmr.serve.limits.encode_slots`).
    """

    def __init__(
        self, run: LoadedRun | str | Path, bundles: list[str | Path], *, verify: bool = False, encode_slots: int = 0
    ) -> None:
        if not bundles:
            raise UsageError("pass at least one --index BUNDLE")
        self.encode_slots = resolve_encode_slots(encode_slots)
        self._encoders = ThreadPoolExecutor(self.encode_slots, thread_name_prefix="dscmr-encode")
        self.run = as_run(run)
        self.raw = self.run.config.data.format in raw_formats()
        self.verify = verify
        self._paths: dict[str, Path] = {}
        for p in bundles:
            path = Path(p)
            name = path.resolve().name
            if name in self._paths:
                raise UsageError(f"two bundles are named {name!r}; serve bundles whose folder names differ")
            self._paths[name] = path
        self._swap = threading.Lock()
        self._current: dict[str, LoadedBundle] = {n: self._load(n, p, version=1) for n, p in self._paths.items()}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _load(self, name: str, path: Path, *, version: int) -> LoadedBundle:
        sig = bundle_signature(path)
        r = Retriever(self.run, path, verify=self.verify)
        return LoadedBundle(name, path, r, sig, version, time.time(), dataset_roots(r.bundle.manifest))

    @property
    def names(self) -> list[str]:
        return list(self._paths)

    def get(self, name: str) -> LoadedBundle:
        """The current version of bundle ``name``."""
        try:
            return self._current[name]
        except KeyError:
            raise UnknownBundleError(
                f"unknown bundle {name!r}; this server has {', '.join(self._paths)} (see /api/v1/info)"
            ) from None

    def for_query(self, modality: str | None, name: str | None) -> LoadedBundle:
        """The bundle a query goes to: ``name``, or the first bundle searched by queries of ``modality``."""
        if name:
            return self.get(name)
        for lb in self._current.values():
            if modality is None or lb.query_modality == modality:
                return lb
        held = "texts" if modality == "image" else "images"
        raise QueryError(f"no bundle of {held} is loaded, so {modality} queries have nothing to search")

    def all(self) -> list[LoadedBundle]:
        return list(self._current.values())

    def refresh(self, *, force: bool = False) -> dict[str, str]:
        """Reload every bundle whose folder changed (all of them with ``force``).

        Returns:
            Per bundle: ``unchanged``, ``reloaded``, or ``kept: <why>`` when the new version could not be read yet.
        """
        out: dict[str, str] = {}
        with self._swap:  # one reload at a time; readers never wait on this lock
            for name, path in self._paths.items():
                old = self._current[name]
                sig = bundle_signature(path)
                if not force and sig == old.signature:
                    out[name] = "unchanged"
                    continue
                if sig is None:  # a writer is between its two renames: the next check will see its result
                    out[name] = "kept: the bundle is being replaced"
                    continue
                try:
                    new = self._load(name, path, version=old.version + 1)
                except DscmrError as exc:
                    log.warning("keeping version %d of %s: %s", old.version, name, exc)
                    out[name] = f"kept: {exc}"
                    continue
                self._current = {**self._current, name: new}  # one reference assignment: atomic for readers
                log.info("reloaded %s: version %d, %d items", name, new.version, new.retriever.bundle.count)
                out[name] = "reloaded"
        return out

    def warm(self) -> None:
        """Load what the first queries would otherwise wait for: the datasets (id queries, query classes) and,
        for raw-mode runs, the query encoders (one dummy text and one dummy image through each)."""
        import numpy as np

        for lb in self.all():
            try:
                lb.query_labels(lb.query_modality, "")
            except DscmrError as exc:
                log.warning("bundle %s: its dataset cannot be loaded (%s); id queries will fail", lb.name, exc)
            if not self.raw:
                continue
            if lb.query_modality == "text":
                lb.retriever.search_texts(["warm up"], k=1)
            else:
                from PIL import Image

                fd, path = tempfile.mkstemp(suffix=".png")
                os.close(fd)
                try:
                    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
                    lb.retriever.search_images([path], k=1)
                finally:
                    os.unlink(path)

    def encode(self, work: Callable[[], T]) -> T:
        """Run ``work`` (a query through the encoders) on one of the ``encode_slots`` encoder threads; wait for it."""
        return self._encoders.submit(work).result()

    def start_watcher(self, interval: float = 1.0) -> None:
        """Check the bundles for changes every ``interval`` seconds in a daemon thread."""
        if self._watcher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - the watcher must outlive any one failed check
                    log.exception("bundle check failed")

        self._watcher = threading.Thread(target=loop, name="dscmr-bundle-watcher", daemon=True)
        self._watcher.start()

    def stop_watcher(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        self._stop.clear()
