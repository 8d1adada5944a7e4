"""Exclusive locks on files that sow appends to (batch manifests and their parts), through filelock.

A lock is held on a sidecar file beside the data, ``<name>.lock``, never on the data itself:
filelock takes ``flock`` on POSIX and ``LockFileEx`` on Windows (a mandatory lock there,
which would block the writes), so the same code holds on both. Every lock here is taken
without waiting: a file that is held belongs to another running sow process, and the caller
says so or leaves that file alone. On POSIX the empty sidecar stays after release (filelock
keeps it so that waiters share one inode); :func:`forget` removes it once its file is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

SUFFIX = ".lock"


def lock_path(path: Path) -> Path:
    """The sidecar that stands for ``path``'s lock."""
    return path.with_name(path.name + SUFFIX)


@contextmanager
def held(path: Path) -> Iterator[bool]:
    """Hold ``path``'s lock for the block and yield True, or yield False at once when another process holds it."""
    lock = FileLock(lock_path(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def forget(path: Path) -> None:
    """Remove ``path``'s sidecar (after ``path`` itself was removed, under its lock)."""
    lock_path(path).unlink(missing_ok=True)
