"""A non-blocking, process-wide exclusive lock on a hidden file beside a folder that one process writes at a time.

::

    DIR/.NAME.lock    created on first use, never deleted; held with fcntl.flock while the writer runs

The kernel releases the lock when its holder exits, killed or not, so a stale lock file never blocks a later writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def sibling_lock_path(target: Path) -> Path:
    """The lock file of the folder ``target``: ``.NAME.lock`` in its parent folder."""
    return target.parent / f".{target.name}.lock"


def try_flock(fd: int) -> bool:
    """Take an exclusive ``flock`` on the open descriptor ``fd`` without waiting; False if another descriptor holds
    it (in any process, this one included)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


@contextlib.contextmanager
def try_exclusive(target: str | Path) -> Iterator[bool]:
    """Try to hold the lock of ``target`` for the ``with`` block; yield whether this process got it.

    Never waits: False means another process (or another descriptor of this one) holds it, and nothing is held.
    The parent folder is created when missing.

    Raises:
        OSError: The lock file cannot be created or opened (for example, a read-only folder).
    """
    path = sibling_lock_path(Path(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        yield try_flock(fd)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
