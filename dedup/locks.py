"""Locks that a crashed process cannot leave behind: flock(2) on small files.

A flock belongs to an open file description, so the kernel drops it when the
holder's last descriptor closes, including when the process dies; a lock
file left on disk by a dead process is therefore free, never stale. And two
descriptors opened separately conflict even within one process, so a GC
thread in the appliance sees the leases of backup threads of the same
process as held.

store/locks/gc                one GC at a time (held for the whole run)
store/writers/<backup-id>     lease of a backup being written (leases.py)

Remote backends cannot flock; sftp.py keeps the same contract with leases
that a heartbeat keeps fresh, and rados.py and s3.py with locks held apart
from the file they guard (guarded_try_lock, guarded_create_lock).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from .errors import StoreBusyError

LOCKS_DIR = "locks"
WRITERS_DIR = "writers"
_ATTEMPTS = 3


class FileLock:
    """An exclusive flock on `path`, held until release()."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def try_acquire(cls, path: Path, create: bool = True) -> FileLock | None:
        """The lock, or None when another open file holds it or (create=False) the file is gone."""
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def release(self, unlink: bool = False) -> None:
        """Drop the lock; with unlink, remove the file first, while still holding it."""
        if unlink:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)


class HeldLock(Protocol):
    def release(self) -> None: ...


L = TypeVar("L", bound=HeldLock)


def guarded_try_lock(exists: Callable[[], bool], acquire: Callable[[], L | None],
                     write_exclusive: Callable[[bytes], None], create: bool) -> L | None:
    """Backend.try_lock where the lock lives apart from the file it guards: the lock, with the
    file existing (made empty under the lock when `create`), or None while another holds it."""
    if not create and not exists():
        return None
    lock = acquire()
    if lock is None:
        return None
    if not exists():
        if not create:
            lock.release()
            return None
        write_exclusive(b"")
    return lock


def guarded_create_lock(acquire: Callable[[], L | None], write_exclusive: Callable[[bytes], None],
                        content: bytes, where: str) -> L:
    """Backend.create_lock where the lock lives apart from the file it guards: the file made
    with `content` under the lock, which is released again if that fails."""
    lock = acquire()
    if lock is None:
        raise FileExistsError(errno.EEXIST, f"{where} is locked by another holder")
    try:
        write_exclusive(content)
    except BaseException:
        lock.release()
        raise
    return lock


def create_locked(path: Path, content: bytes) -> FileLock:
    """Create path (O_EXCL: FileExistsError if it exists), lock it and write content."""
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
        # Blocking: whoever else locks a lease (a GC probing it) holds it for a moment only.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _still_named(fd, path):
            os.write(fd, content)
            return FileLock(fd, path)
        # A GC took the file for a dead lease between our open and flock, and removed it.
        os.close(fd)
    raise StoreBusyError(f"could not lock {path}: removed {_ATTEMPTS} times by a concurrent GC")


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
