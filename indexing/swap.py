"""Atomic folder writes for index bundles: a writer lock, staging, the fsync-and-rename swap and recovery.

Beside a bundle ``DIR/NAME`` live, all hidden::

    DIR/.NAME.lock        the writer lock (fcntl.flock); created once, never swapped or deleted
    DIR/.NAME.tmp-PID-*   a build in progress (deleted when its process is gone)
    DIR/.NAME.old-*       the previous bundle while a swap is between its two renames

Writers (build, add) take the lock, exclusive, across the whole read-modify-swap, so two writers of one bundle
run one after the other and neither loses the other's items. Readers never wait for it: they probe it without
blocking and run :func:`recover` only when no writer holds it; while a writer is alive they read the last
complete version (the bundle, or between the two renames its backup) and never rename anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from dscmr.errors import IndexBundleError
from dscmr.indexing.manifest import MANIFEST
from dscmr.utils.locks import sibling_lock_path, try_flock

# Locks held in this process: (lock-file path, thread id) -> descriptor. flock conflicts between two descriptors of
# one process too, so nested writers of one thread (add -> load -> swap) share the outermost one, and another
# thread of the process waits like another process would.
_HELD: dict[tuple[str, int], int] = {}


def _key(target: Path) -> tuple[str, int]:
    return str(lock_path(target).resolve()), threading.get_ident()


def _siblings(target: Path, kind: str) -> list[Path]:
    """``.NAME.old-*`` (``kind="old"``) or ``.NAME.tmp-*`` folders beside ``target``, sorted by name."""
    return sorted(target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"))


def lock_path(target: Path) -> Path:
    """The writer-lock file of the bundle ``target``."""
    return sibling_lock_path(target)


def _open_lock(target: Path, *, create: bool) -> int | None:
    path = lock_path(target)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT if create else os.O_RDONLY, 0o666)
    except FileNotFoundError:
        return None
    except OSError:  # a read-only folder: open the lock as it is, if it exists
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None


@contextlib.contextmanager
def writer_lock(target: Path) -> Iterator[None]:
    """Hold the bundle's writer lock (blocking until other writers are done); re-entrant within a process.

    Raises:
        IndexBundleError: The lock file cannot be created (the folder is not writable).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    key = _key(target)
    if key in _HELD:  # re-entrant: the outermost holder releases it
        yield
        return
    fd = _open_lock(target, create=True)
    if fd is None:
        raise IndexBundleError(f"cannot create the lock file {lock_path(target)}; check the folder's permissions")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD[key] = fd
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)  # closing the descriptor releases the lock


def holds_writer_lock(target: Path) -> bool:
    """Whether this thread holds the writer lock of ``target``."""
    return _key(Path(target)) in _HELD


@contextlib.contextmanager
def probe_writer(target: Path) -> Iterator[bool]:
    """Yield True when no other writer is alive (holding the lock meanwhile, so none starts), False otherwise.

    Never blocks. Nothing at ``target`` and no lock file: True (there is nothing to recover). A folder where the
    lock file cannot be created or opened is read-only, so no writer can be changing it either: True.
    """
    target = Path(target)
    if holds_writer_lock(target):
        yield True
        return
    exists = target.exists() or bool(_siblings(target, "old"))
    fd = _open_lock(target, create=exists) if target.parent.is_dir() else None
    if fd is None:
        yield True
        return
    try:
        yield try_flock(fd)
    finally:
        os.close(fd)


def last_complete(target: Path) -> Path:
    """The folder a reader should load while a writer is alive: the bundle, or its backup mid-swap."""
    if target.is_dir():
        return target
    backups = _siblings(target, "old")
    return backups[-1] if backups else target


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
    delete temporary folders of builds that are no longer running.

    Call it only with the writer lock held, or after :func:`probe_writer` said no writer is alive.
    """
    parent = target.parent
    if not parent.is_dir():
        return
    backups = _siblings(target, "old")
    if backups and not target.exists():
        os.rename(backups[-1], target)
        backups = backups[:-1]
    for stale in backups:
        shutil.rmtree(stale, ignore_errors=True)
    for tmp in _siblings(target, "tmp"):
        pid = tmp.name.rsplit("-", 2)[-2] if tmp.name.count("-") >= 2 else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target``; on success swap it into place, on failure delete it.

    The writer lock is held from before recovery until after the swap (callers that read the old bundle take it
    earlier with :func:`writer_lock`; it is re-entrant).

    Raises:
        IndexBundleError: ``target`` exists and is not an index bundle (it is never overwritten).
    """
    target = Path(target)
    with writer_lock(target):
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
            _swap(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _swap(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` goes to a backup first and is deleted after."""
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


__all__ = ["holds_writer_lock", "last_complete", "lock_path", "probe_writer", "recover", "staging_dir", "writer_lock"]
