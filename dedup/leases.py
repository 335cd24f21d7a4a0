"""Writer leases: how GC knows which backups are being written, and since when.

A BackupSession creates writers/<backup-id> before it makes its backup
directory or touches a chunk, holds a lock on it for its whole life, and
removes it only after its manifest is written (commit) or its directory is
removed (abort). So:

- a lease that nobody holds locked belongs to a dead writer;
- the lease file's mtime, set when it is created and never changed, is a
  store timestamp no later than any chunk the writer writes or touches;
- a backup directory without a manifest whose lease is gone or dead will
  never get one: it is abandoned.

The file holds JSON {"backup_id", "vm", "pid", "host", "started"} for people
looking at a store; GC reads only the lock and the mtime.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from .backend import Backend, Lock, join
from .errors import BackupExistsError
from .locks import WRITERS_DIR
from .manifest import format_time


class WriterLease:
    def __init__(self, lock: Lock) -> None:
        self._lock = lock

    @classmethod
    def acquire(cls, backend: Backend, vm: str, backup_id: str) -> WriterLease:
        record = {
            "backup_id": backup_id,
            "vm": vm,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": format_time(datetime.now(UTC)),
        }
        backend.make_dir(WRITERS_DIR)
        try:
            # Exclusive creation: two writers of one backup id cannot both get here.
            lock = backend.create_lock(join(WRITERS_DIR, backup_id), json.dumps(record).encode() + b"\n")
        except FileExistsError:
            raise BackupExistsError(f"backup {backup_id} is already being written in store {backend.location}") from None
        return cls(lock)

    @classmethod
    def take_over(cls, backend: Backend, vm: str, backup_id: str) -> WriterLease:
        """The lease of a backup id whose writer may have died holding it (an upgrade run again);
        BackupExistsError if that writer is alive."""
        try:
            return cls.acquire(backend, vm, backup_id)
        except BackupExistsError:
            lock = lock_dead_lease(backend, backup_id)
            if lock is None:
                raise
            return cls(lock)

    def release(self) -> None:
        self._lock.release(unlink=True)


@dataclass(frozen=True)
class LeaseScan:
    live_started_ns: dict[str, int]  # backup id -> lease mtime, for writers alive now
    dead: tuple[str, ...]  # backup ids whose lease nobody holds


def scan_leases(backend: Backend) -> LeaseScan:
    live: dict[str, int] = {}
    dead: list[str] = []
    for entry in backend.list(WRITERS_DIR):
        if entry.name.startswith(".") or entry.is_dir:
            continue
        lock = backend.try_lock(join(WRITERS_DIR, entry.name), create=False)
        if lock is None:
            # Held, or the writer finished while we looked (then it no longer matters).
            live[entry.name] = entry.mtime_ns
        else:
            lock.release()
            dead.append(entry.name)
    return LeaseScan(live, tuple(sorted(dead)))


def lock_dead_lease(backend: Backend, backup_id: str) -> Lock | None:
    """The lease of backup_id locked by us, proving its writer is gone; None if it is alive.

    A missing lease file also proves the writer is gone: it is then created
    and locked, so no writer can start under that id while we hold it.
    """
    backend.make_dir(WRITERS_DIR)
    return backend.try_lock(join(WRITERS_DIR, backup_id), create=True)
