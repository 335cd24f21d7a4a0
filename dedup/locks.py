"""Locks that a crashed process cannot leave behind: flock(2) on small files.

A flock belongs to an open file description, so the kernel drops it when the
holder's last descriptor closes, including when the process dies; a lock
file left on disk by a dead process is therefore free, never stale. And two
descriptors opened separately conflict even within one process, so a GC
thread in the appliance sees the leases of backup threads of the same
process as held.

store/locks/gc                one GC at a time (held for the whole run)
store/writers/<backup-id>     lease of a backup being written (writer.py)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCKS_DIR = "locks"
WRITERS_DIR = "writers"


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
