"""Garbage collection: remove the chunks no backup needs, while backups run.

No lock blocks backups. Safety comes from file times, all taken from the
store's own clock so that host and file server clocks never mix (an SFTP
store can only approximate that clock; the cutoff is moved back by the
backend's clock_error_ns to cover it):

1. GC takes store/locks/gc (one GC at a time) and touches it: its mtime is
   `gc_start`.
2. It reads the writer leases (leases.py). A live writer's lease mtime is no
   later than any chunk that writer has written or touched. The cutoff is
   min(gc_start, oldest live lease) - grace.
3. It marks every chunk named by every committed index (read after step 2,
   so a backup committed before that is seen, and one committing later had a
   live lease in step 2 or started after gc_start).
4. It sweeps chunks that are unmarked and whose mtime is older than the
   cutoff. A writer touches (utime) a chunk it deduplicates against or reuses
   from a parent instead of testing that it exists, so every chunk a running
   or future backup relies on has an mtime at or after the cutoff.

What remains is the race between GC's stat and its removal: a writer could
touch a chunk in between. So a victim is first renamed to `.<id>.gc`, and
only after the whole sweep is each renamed file's mtime checked again: a
touched one is renamed back, the others are deleted. A writer that touches a
chunk already renamed finds it missing and writes it anew. A `.gc` file left
by a crashed GC is restored if referenced or recent, deleted otherwise.

The same cutoff removes temp files (`.*.tmp`) of dead writers. Backup
directories without a manifest whose lease is dead or gone are abandoned
and removed whatever their age: a writer never outlives its lease.

GC never removes directories under chunks/: a writer may have just checked
that the directory it is about to write into exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .backend import Entry, Lock, join
from .chunks import chunk_digest
from .errors import GcUnsafeError, StoreBusyError
from .leases import LeaseScan, lock_dead_lease, scan_leases
from .locks import LOCKS_DIR
from .manifest import MANIFEST_FILE
from .references import UnreadableBackup, walk_indexes
from .store import Store

DEFAULT_GRACE = timedelta(hours=24)
GC_LOCK = "gc"
TRASH_SUFFIX = ".gc"
TEMP_SUFFIX = ".tmp"

# progress(phase, done, total): phase "mark" counts manifests, "sweep" chunk prefix directories.
GcProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    cutoff: datetime  # unreferenced chunks older than this were (or would be) removed
    live_writers: tuple[str, ...]  # backup ids being written while GC ran
    chunks_referenced: int
    chunks_removed: int
    bytes_removed: int
    chunks_kept: int  # chunk files left in the store
    bytes_kept: int
    chunks_within_grace: int  # unreferenced but newer than the cutoff: kept, a later GC decides
    temp_files_removed: int
    abandoned_backups_removed: tuple[str, ...]  # "vm/backup-id"
    seconds: float


def collect_garbage(
    store: Store, grace: timedelta = DEFAULT_GRACE, dry_run: bool = False, progress: GcProgress | None = None
) -> GcReport:
    if grace < timedelta(0):
        raise ValueError(f"grace period must not be negative, got {grace}")
    backend = store.backend
    backend.make_dir(LOCKS_DIR)
    lock = backend.try_lock(join(LOCKS_DIR, GC_LOCK))
    if lock is None:
        raise StoreBusyError(f"another GC is running on store {store.location} (it holds {LOCKS_DIR}/{GC_LOCK})")
    try:
        return _Collection(store, lock, grace, dry_run, progress).run()
    finally:
        lock.release()


@dataclass
class _Counts:
    removed: int = 0
    bytes_removed: int = 0
    kept: int = 0
    bytes_kept: int = 0
    within_grace: int = 0
    temp_files: int = 0


@dataclass(frozen=True)
class _Trashed:
    trash: str  # the .gc name it was renamed to
    chunk: str  # its name as a chunk
    digest: bytes
    size: int


@dataclass
class _Collection:
    store: Store
    lock: Lock
    grace: timedelta
    dry_run: bool
    progress: GcProgress | None
    cutoff_ns: int = 0
    marked: set[bytes] = field(default_factory=set)
    counts: _Counts = field(default_factory=_Counts)
    # Chunks renamed to their .gc name awaiting the final check.
    trashed: list[_Trashed] = field(default_factory=list)

    def run(self) -> GcReport:
        started = time.monotonic()
        backend = self.store.backend
        lock_name = join(LOCKS_DIR, GC_LOCK)
        backend.touch(lock_name)
        gc_start_ns = _mtime(self.store, lock_name)
        leases = scan_leases(backend)
        self.cutoff_ns = (
            min([gc_start_ns, *leases.live_started_ns.values()]) - _ns(self.grace) - backend.clock_error_ns
        )
        self.marked = self._mark()
        self._sweep_chunks()
        self._settle_trash()
        abandoned = self._sweep_abandoned(leases)
        self._sweep_backup_temp_files()
        c = self.counts
        return GcReport(
            dry_run=self.dry_run,
            cutoff=datetime.fromtimestamp(self.cutoff_ns / 1e9, UTC),
            live_writers=tuple(sorted(leases.live_started_ns)),
            chunks_referenced=len(self.marked),
            chunks_removed=c.removed,
            bytes_removed=c.bytes_removed,
            chunks_kept=c.kept,
            bytes_kept=c.bytes_kept,
            chunks_within_grace=c.within_grace,
            temp_files_removed=c.temp_files,
            abandoned_backups_removed=abandoned,
            seconds=time.monotonic() - started,
        )

    def _mark(self) -> set[bytes]:
        marked: set[bytes] = set()
        unreadable: list[UnreadableBackup] = []
        progress = (lambda done, total: self.progress("mark", done, total)) if self.progress else None
        for item in walk_indexes(self.store, progress):
            if isinstance(item, UnreadableBackup):
                unreadable.append(item)
            else:
                marked.update(digest for _, digest in item.index.stored_chunks())
        if unreadable:
            listed = "; ".join(f"{u.vm}/{u.backup_id}: {u.error}" for u in unreadable)
            raise GcUnsafeError(
                f"GC removed nothing: {len(unreadable)} backup(s) cannot be read, so the chunks they "
                f"need are unknown. Repair or prune them first: {listed}"
            )
        return marked

    def _sweep_chunks(self) -> None:
        prefixes = self.store.chunks.prefix_dirs()
        for done, prefix in enumerate(prefixes, 1):
            for directory, entry in self.store.chunks.entries(prefix):
                self._sweep_entry(directory, entry)
            if self.progress:
                self.progress("sweep", done, len(prefixes))

    def _sweep_entry(self, directory: str, entry: Entry) -> None:
        name = entry.name
        path = join(directory, name)
        if name.startswith(".") and name.endswith(TEMP_SUFFIX):
            if entry.mtime_ns < self.cutoff_ns:
                self._remove_temp(path)
            return
        if name.startswith(".") and name.endswith(TRASH_SUFFIX):
            self._sweep_leftover_trash(directory, entry)
            return
        digest = chunk_digest(name)
        if digest is None:
            return  # not ours: leave it
        if digest in self.marked or entry.mtime_ns >= self.cutoff_ns:
            self._keep(digest, entry.size)
        elif self.dry_run:
            self.counts.removed += 1
            self.counts.bytes_removed += entry.size
        else:
            trash = join(directory, f".{name}{TRASH_SUFFIX}")
            try:
                self.store.backend.rename(path, trash)
            except FileNotFoundError:
                return
            self.trashed.append(_Trashed(trash, path, digest, entry.size))

    def _sweep_leftover_trash(self, directory: str, entry: Entry) -> None:
        """A .gc file a crashed GC left behind: a chunk unless proven garbage now."""
        trash = join(directory, entry.name)
        chunk = join(directory, entry.name[1 : -len(TRASH_SUFFIX)])
        digest = chunk_digest(chunk.rsplit("/", 1)[1])
        if digest is None or self.dry_run:
            return
        if digest in self.marked or entry.mtime_ns >= self.cutoff_ns:
            self.store.backend.rename(trash, chunk)
            self._keep(digest, entry.size)
        else:
            self.trashed.append(_Trashed(trash, chunk, digest, entry.size))

    def _settle_trash(self) -> None:
        """Delete each renamed chunk, unless a writer touched it since we looked."""
        backend = self.store.backend
        for t in self.trashed:
            if _mtime(self.store, t.trash) >= self.cutoff_ns:
                backend.rename(t.trash, t.chunk)
                self._keep(t.digest, t.size)
            else:
                backend.remove(t.trash)
                self.counts.removed += 1
                self.counts.bytes_removed += t.size

    def _keep(self, digest: bytes, size: int) -> None:
        self.counts.kept += 1
        self.counts.bytes_kept += size
        if digest not in self.marked:
            self.counts.within_grace += 1

    def _remove_temp(self, name: str) -> None:
        if not self.dry_run:
            self.store.backend.remove(name)
        self.counts.temp_files += 1

    def _sweep_abandoned(self, leases: LeaseScan) -> tuple[str, ...]:
        """Backup directories that will never get a manifest, and dead leases."""
        backend = self.store.backend
        without_manifest = {
            d.backup_id: d for d in self.store.backup_dirs() if backend.stat(d.file(MANIFEST_FILE)) is None
        }
        if self.dry_run:
            return tuple(
                f"{d.vm}/{backup_id}"
                for backup_id, d in sorted(without_manifest.items())
                if backup_id not in leases.live_started_ns
            )
        removed = []
        for backup_id in sorted(without_manifest.keys() | set(leases.dead)):
            lease = lock_dead_lease(backend, backup_id)
            if lease is None:
                continue  # its writer is alive
            directory = without_manifest.get(backup_id)
            # Checked again under the lease: the writer may have committed meanwhile.
            if directory is not None and backend.stat(directory.file(MANIFEST_FILE)) is None:
                backend.remove_tree(directory.name)
                removed.append(f"{directory.vm}/{backup_id}")
            lease.release(unlink=True)
        return tuple(removed)

    def _sweep_backup_temp_files(self) -> None:
        for directory in self.store.backup_dirs():
            for entry in self.store.backend.list(directory.name):
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.mtime_ns < self.cutoff_ns:
                    self._remove_temp(directory.file(entry.name))


def _mtime(store: Store, name: str) -> int:
    entry = store.backend.stat(name)
    if entry is None:
        raise FileNotFoundError(f"{store.location}/{name} vanished during GC")
    return entry.mtime_ns


def _ns(delta: timedelta) -> int:
    return round(delta.total_seconds() * 1e9)
