"""Writer leases: how GC knows which backups are being written, and since when.

A BackupSession creates store/writers/<backup-id> before it makes its backup
directory or touches a chunk, holds an flock on it for its whole life, and
removes it only after its manifest is written (commit) or its directory is
removed (abort). So:

- a lease that nobody holds locked belongs to a dead writer;
- the lease file's mtime, set when it is created and never changed, is a file
  system timestamp no later than any chunk the writer writes or touches;
- a backup directory without a manifest whose lease is gone or dead will
  never get one: it is abandoned.

The file holds JSON {"backup_id", "vm", "pid", "host", "started"} for people
looking at a store; GC reads only the lock and the mtime.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import BackupExistsError, StoreBusyError
from .locks import WRITERS_DIR, FileLock
from .manifest import format_time

_ATTEMPTS = 3


class WriterLease:
    def __init__(self, lock: FileLock) -> None:
        self._lock = lock

    @classmethod
    def acquire(cls, store_path: Path, vm: str, backup_id: str) -> WriterLease:
        writers = store_path / WRITERS_DIR
        writers.mkdir(exist_ok=True)
        path = writers / backup_id
        record = {
            "backup_id": backup_id,
            "vm": vm,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": format_time(datetime.now(UTC)),
        }
        for _ in range(_ATTEMPTS):
            try:
                # O_EXCL: two writers of one backup id cannot both get here.
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                raise BackupExistsError(f"backup {backup_id} is already being written in store {store_path}") from None
            # Blocking: a GC probing leases holds a lock for a moment only.
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_named(fd, path):
                os.write(fd, json.dumps(record).encode() + b"\n")
                return cls(FileLock(fd, path))
            # A GC took the lease for a dead one between our open and flock, and removed it.
            os.close(fd)
        raise StoreBusyError(f"could not take lease {path}: removed {_ATTEMPTS} times by a concurrent GC")

    def release(self) -> None:
        self._lock.release(unlink=True)


@dataclass(frozen=True)
class LeaseScan:
    live_started_ns: dict[str, int]  # backup id -> lease mtime, for writers alive now
    dead: tuple[str, ...]  # backup ids whose lease nobody holds


def scan_leases(store_path: Path) -> LeaseScan:
    live: dict[str, int] = {}
    dead: list[str] = []
    for path, lock in _probe(store_path / WRITERS_DIR):
        if lock is None:
            try:
                live[path.name] = path.stat().st_mtime_ns
            except FileNotFoundError:
                pass  # the writer finished while we looked
        else:
            lock.release()
            dead.append(path.name)
    return LeaseScan(live, tuple(sorted(dead)))


def lock_dead_lease(store_path: Path, backup_id: str) -> FileLock | None:
    """The lease of backup_id locked by us, proving its writer is gone; None if it is alive.

    A missing lease file also proves the writer is gone: it is then created
    and locked, so no writer can start under that id while we hold it.
    """
    writers = store_path / WRITERS_DIR
    writers.mkdir(exist_ok=True)
    return FileLock.try_acquire(writers / backup_id, create=True)


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _probe(writers: Path) -> Iterator[tuple[Path, FileLock | None]]:
    if not writers.is_dir():
        return
    for path in writers.iterdir():
        if not path.name.startswith("."):
            yield path, FileLock.try_acquire(path, create=False)
