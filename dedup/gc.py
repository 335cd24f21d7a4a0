"""Garbage collection: remove the chunks no backup needs, while backups run.

No lock blocks backups. Safety comes from file times, all taken from the
store's own file system clock so that host and file server clocks never mix:

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

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .chunks import chunk_digest
from .errors import GcUnsafeError, StoreBusyError
from .leases import LeaseScan, lock_dead_lease, scan_leases
from .locks import LOCKS_DIR, FileLock
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
    locks = store.path / LOCKS_DIR
    locks.mkdir(exist_ok=True)
    lock = FileLock.try_acquire(locks / GC_LOCK)
    if lock is None:
        raise StoreBusyError(f"another GC is running on store {store.path} (it holds {locks / GC_LOCK})")
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


@dataclass
class _Collection:
    store: Store
    lock: FileLock
    grace: timedelta
    dry_run: bool
    progress: GcProgress | None
    cutoff_ns: int = 0
    marked: set[bytes] = field(default_factory=set)
    counts: _Counts = field(default_factory=_Counts)
    # Chunks renamed to their .gc name awaiting the final check: (.gc path, chunk path, digest, size).
    trashed: list[tuple[Path, Path, bytes, int]] = field(default_factory=list)

    def run(self) -> GcReport:
        started = time.monotonic()
        os.utime(self.lock.fd)
        gc_start_ns = os.fstat(self.lock.fd).st_mtime_ns
        leases = scan_leases(self.store.path)
        self.cutoff_ns = min([gc_start_ns, *leases.live_started_ns.values()]) - _ns(self.grace)
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
            for entry in self.store.chunks.entries(prefix):
                self._sweep_entry(entry)
            if self.progress:
                self.progress("sweep", done, len(prefixes))

    def _sweep_entry(self, entry: os.DirEntry[str]) -> None:
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return  # a writer's temp file renamed, or a concurrent trash move
        name = entry.name
        if name.startswith(".") and name.endswith(TEMP_SUFFIX):
            if st.st_mtime_ns < self.cutoff_ns:
                self._remove_temp(path)
            return
        if name.startswith(".") and name.endswith(TRASH_SUFFIX):
            self._sweep_leftover_trash(path, st)
            return
        digest = chunk_digest(name)
        if digest is None:
            return  # not ours: leave it
        if digest in self.marked or st.st_mtime_ns >= self.cutoff_ns:
            self._keep(digest, st.st_size)
        elif self.dry_run:
            self.counts.removed += 1
            self.counts.bytes_removed += st.st_size
        else:
            trash = path.with_name(f".{name}{TRASH_SUFFIX}")
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                return
            self.trashed.append((trash, path, digest, st.st_size))

    def _sweep_leftover_trash(self, trash: Path, st: os.stat_result) -> None:
        """A .gc file a crashed GC left behind: a chunk unless proven garbage now."""
        chunk = trash.with_name(trash.name[1 : -len(TRASH_SUFFIX)])
        digest = chunk_digest(chunk.name)
        if digest is None or self.dry_run:
            return
        if digest in self.marked or st.st_mtime_ns >= self.cutoff_ns:
            os.rename(trash, chunk)
            self._keep(digest, st.st_size)
        else:
            self.trashed.append((trash, chunk, digest, st.st_size))

    def _settle_trash(self) -> None:
        """Delete each renamed chunk, unless a writer touched it since we looked."""
        for trash, chunk, digest, size in self.trashed:
            if trash.stat().st_mtime_ns >= self.cutoff_ns:
                os.rename(trash, chunk)
                self._keep(digest, size)
            else:
                trash.unlink()
                self.counts.removed += 1
                self.counts.bytes_removed += size

    def _keep(self, digest: bytes, size: int) -> None:
        self.counts.kept += 1
        self.counts.bytes_kept += size
        if digest not in self.marked:
            self.counts.within_grace += 1

    def _remove_temp(self, path: Path) -> None:
        if not self.dry_run:
            path.unlink(missing_ok=True)
        self.counts.temp_files += 1

    def _sweep_abandoned(self, leases: LeaseScan) -> tuple[str, ...]:
        """Backup directories that will never get a manifest, and dead leases."""
        without_manifest = {d.name: d for d in self.store.backup_dirs() if not (d / MANIFEST_FILE).exists()}
        if self.dry_run:
            return tuple(
                f"{d.parent.name}/{backup_id}"
                for backup_id, d in sorted(without_manifest.items())
                if backup_id not in leases.live_started_ns
            )
        removed = []
        for backup_id in sorted(without_manifest.keys() | set(leases.dead)):
            lease = lock_dead_lease(self.store.path, backup_id)
            if lease is None:
                continue  # its writer is alive
            directory = without_manifest.get(backup_id)
            # Checked again under the lease: the writer may have committed meanwhile.
            if directory is not None and not (directory / MANIFEST_FILE).exists():
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(f"{directory.parent.name}/{backup_id}")
            lease.release(unlink=True)
        return tuple(removed)

    def _sweep_backup_temp_files(self) -> None:
        for directory in self.store.backup_dirs():
            for path in directory.glob(f".*{TEMP_SUFFIX}"):
                try:
                    if path.stat().st_mtime_ns < self.cutoff_ns:
                        self._remove_temp(path)
                except FileNotFoundError:
                    pass


def _ns(delta: timedelta) -> int:
    return round(delta.total_seconds() * 1e9)
