"""Garbage collection: reclaim the blocks no backup needs, by repacking, while backups run.

No lock blocks backups. Safety comes from file times, all taken from the store's own clock so
that host and file server clocks never mix (an SFTP store can only approximate that clock; the
cutoff is moved back by the backend's clock_error_ns to cover it):

1. GC takes store/locks/gc (one GC, repair or upgrade at a time) and touches it: its mtime is
   `gc_start`.
2. It reads the writer leases (leases.py). A live writer's lease mtime is no later than any
   pack that writer has written or touched. The cutoff is min(gc_start, oldest live lease)
   - grace.
3. It marks every page and block of every committed backup's maps (read after step 2, so a
   backup committed before that is seen, and one committing later had a live lease in step 2
   or started after gc_start).
4. It looks only at packs whose mtime is older than the cutoff. A writer touches (utime) each
   pack it deduplicates against or inherits from once, instead of testing that it exists, so
   every pack a running or future backup relies on has an mtime at or after the cutoff.
   Such a pack is:
   - removed, when none of its blocks is marked;
   - repacked, when the unmarked share of its bytes is at least the threshold: its marked
     blocks are copied (checked, not recompressed) into new packs, then it is removed;
   - kept otherwise: its dead blocks wait until more of the pack dies.
5. New packs are made durable and indexed before any old pack goes. An old pack is first
   renamed to `.<name>.gc`, and only after all renames is each one's mtime checked again: a
   writer that touched it in between had it renamed back; the rest are deleted. A writer that
   touches a pack already renamed finds it missing and writes its block anew; a reader goes to
   the `.gc` name or, through a reloaded index, to the new pack. A `.gc` pack left by a crashed
   GC is renamed back if it was touched since the cutoff or holds a marked block no other pack
   holds, deleted otherwise: a crash at any step loses no block a backup needs.
6. A new index file covers every pack kept; the index files read in step 4 are removed.

The threshold is 25% by default. Repacking a pack whose dead share is d copies (1 - d) of it to
free d: at 25% that is at most 3 bytes written per byte freed, and no more than a quarter of the
packs' bytes can be dead and kept (restic's default, 5% of the whole repository, buys a
smaller store with up to 19 bytes written per byte freed; a backup appliance's disk is
better spent on history than on repacking churn). Fully dead packs cost nothing to remove.

The same cutoff removes temp files (`.*.tmp`) of dead writers. Backup directories without a
manifest whose lease is dead or gone are abandoned and removed whatever their age: a writer
never outlives its lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .backend import Entry, Lock, join
from .blockindex import INDEX_DIR, BlockIndex, PackInfo, list_packs, write_index_file
from .errors import ChunkCorruptError, GcUnsafeError, StoreBusyError
from .immutability import pinned_packs
from .leases import LeaseScan, lock_dead_lease, scan_leases
from .locks import LOCKS_DIR
from .manifest import MANIFEST_FILE
from .packs import (
    DATA,
    PACKS_DIR,
    PAGE,
    RECORD_SIZE,
    TRASH_SUFFIX,
    PackFormatError,
    PackWriter,
    is_pack_name,
    pack_file,
    read_trailer,
    trash_name,
)
from .references import References, collect_references
from .store import Store

DEFAULT_GRACE = timedelta(hours=24)
DEFAULT_REPACK_THRESHOLD = 0.25
GC_LOCK = "gc"
TEMP_SUFFIX = ".tmp"

# progress(phase, done, total): phase "mark" counts manifests, "sweep" packs.
GcProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    cutoff: datetime  # unreferenced blocks in packs older than this were (or would be) reclaimed
    live_writers: tuple[str, ...]  # backup ids being written while GC ran
    chunks_referenced: int  # blocks and map pages the backups reference
    chunks_removed: int  # blocks dropped (or that would be)
    bytes_removed: int  # bytes of pack files freed (or that would be)
    chunks_kept: int  # blocks left in the store
    bytes_kept: int  # bytes of the pack files left
    chunks_within_grace: int  # unreferenced blocks kept: their pack is newer than the cutoff or mostly live
    temp_files_removed: int
    abandoned_backups_removed: tuple[str, ...]  # "vm/backup-id"
    seconds: float
    packs_removed: int = 0  # removed whole, or after repacking
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_repacked: int = 0  # live bytes copied into new packs
    dead_bytes_kept: int = 0  # unreferenced bytes left in kept packs
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD
    problems: tuple[str, ...] = ()  # packs left alone because they could not be read
    packs_locked: int = 0  # kept as they are: they hold blocks of backups under a retention lock


def collect_garbage(
    store: Store,
    grace: timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
    progress: GcProgress | None = None,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
) -> GcReport:
    if grace < timedelta(0):
        raise ValueError(f"grace period must not be negative, got {grace}")
    if not 0 < repack_threshold <= 1:
        raise ValueError(f"repack threshold must be in (0, 1], got {repack_threshold}")
    store.require_format2("GC")
    backend = store.backend
    backend.make_dir(LOCKS_DIR)
    lock = hold_gc_lock(store, "GC")
    try:
        return _Collection(store, lock, grace, dry_run, progress, repack_threshold).run()
    finally:
        lock.release()


def hold_gc_lock(store: Store, who: str) -> Lock:
    """The lock GC, repair and upgrade take; StoreBusyError naming who holds it otherwise."""
    store.backend.make_dir(LOCKS_DIR)
    lock = store.backend.try_lock(join(LOCKS_DIR, GC_LOCK))
    if lock is None:
        raise StoreBusyError(f"{who} cannot run: another GC, repair or upgrade is running on store "
                             f"{store.location} (it holds {LOCKS_DIR}/{GC_LOCK})")
    return lock


@dataclass
class _Plan:
    remove: list[PackInfo] = field(default_factory=list)
    repack: list[PackInfo] = field(default_factory=list)
    kept_blocks: int = 0
    kept_bytes: int = 0
    dead_kept_blocks: int = 0
    dead_kept_bytes: int = 0
    dropped_blocks: int = 0
    freed_bytes: int = 0
    copied_bytes: int = 0


@dataclass
class _Collection:
    store: Store
    lock: Lock
    grace: timedelta
    dry_run: bool
    progress: GcProgress | None
    threshold: float
    cutoff_ns: int = 0
    temp_files: int = 0
    pinned: set[str] = field(default_factory=set)  # packs of locked backups (immutability.py)
    problems: list[str] = field(default_factory=list)

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
        refs = self._mark()
        live = refs.pages | refs.blocks
        self.pinned = pinned_packs(self.store)
        index_files = [e.name for e in backend.list(INDEX_DIR) if not e.is_dir and not e.name.startswith(".")]
        self.store.blocks.reload()
        self._settle_leftover_trash(live)
        plan = self._plan(live)
        written: list[PackInfo] = []
        if not self.dry_run:
            written = self._repack(plan, live)
            self._retire([*plan.remove, *plan.repack])
            self._consolidate(index_files)
        abandoned = self._sweep_abandoned(leases)
        self._sweep_temp_files()
        return GcReport(
            dry_run=self.dry_run,
            cutoff=datetime.fromtimestamp(self.cutoff_ns / 1e9, UTC),
            live_writers=tuple(sorted(leases.live_started_ns)),
            chunks_referenced=len(live),
            chunks_removed=plan.dropped_blocks,
            bytes_removed=plan.freed_bytes,
            chunks_kept=plan.kept_blocks,
            bytes_kept=plan.kept_bytes,
            chunks_within_grace=plan.dead_kept_blocks,
            temp_files_removed=self.temp_files,
            abandoned_backups_removed=abandoned,
            seconds=time.monotonic() - started,
            packs_removed=len(plan.remove) + len(plan.repack),
            packs_repacked=len(plan.repack),
            packs_written=len(written),
            bytes_repacked=plan.copied_bytes,
            dead_bytes_kept=plan.dead_kept_bytes,
            repack_threshold=self.threshold,
            problems=tuple(self.problems),
            packs_locked=len(self.pinned),
        )

    def _mark(self) -> References:
        report = self.progress
        progress = (lambda done, total: report("mark", done, total)) if report else None
        refs = collect_references(self.store, progress)
        if refs.unreadable:
            listed = "; ".join(f"{u.vm}/{u.backup_id}: {u.error}" for u in refs.unreadable)
            raise GcUnsafeError(
                f"GC removed nothing: {len(refs.unreadable)} backup(s) cannot be read, so the blocks they "
                f"need are unknown. Repair (cairn store repair) or prune them first: {listed}"
            )
        if refs.chunk_backups:
            raise GcUnsafeError(f"GC removed nothing: {len(refs.chunk_backups)} backup(s) are still in format 1; "
                                "finish `cairn store upgrade` first")
        return refs

    def _plan(self, live: set[bytes]) -> _Plan:
        """Which packs go, which are repacked; counted the same for a dry run."""
        index = self.store.blocks.index
        plan = _Plan()
        for name, why in index.load_report.unreadable.items():
            self.problems.append(f"pack {name} left alone: {why}")
        # Each live block keeps one copy: the one the index finds. Others (a block two writers
        # stored at once, an interrupted repack's) are dead weight.
        keeper = {block_id: holder for block_id in live if (holder := index.pack_of(block_id)) is not None}
        packs = sorted((p for p in index.packs.values() if not p.trashed), key=lambda p: p.name)
        for done, pack in enumerate(packs, 1):
            live_records = [r for r in pack.records if keeper.get(r.block_id) == pack.name]
            live_bytes = sum(RECORD_SIZE + r.stored_length for r in live_records)
            dead = len(pack.records) - len(live_records)
            dead_bytes = sum(RECORD_SIZE + r.stored_length for r in pack.records) - live_bytes
            if pack.mtime_ns >= self.cutoff_ns or not dead or pack.name in self.pinned or (
                    live_records and dead_bytes < self.threshold * (live_bytes + dead_bytes)):
                plan.kept_blocks += len(pack.records)
                plan.kept_bytes += pack.size
                plan.dead_kept_blocks += dead
                plan.dead_kept_bytes += dead_bytes
            else:
                (plan.repack if live_records else plan.remove).append(pack)
                plan.dropped_blocks += dead
                plan.kept_blocks += len(live_records)
                plan.copied_bytes += live_bytes
                plan.freed_bytes += pack.size - live_bytes
            if self.progress:
                self.progress("sweep", done, len(packs))
        return plan

    def _repack(self, plan: _Plan, live: set[bytes]) -> list[PackInfo]:
        """Copy the live records of the packs to repack into new packs; durable and indexed."""
        backend = self.store.blocks.backend
        config = self.store.config
        index = self.store.blocks.index
        writers = {kind: PackWriter(backend, config.pack_size, lambda _pack: None) for kind in (DATA, PAGE)}
        unreadable = []
        try:
            for pack in plan.repack:
                try:
                    data = backend.read(pack_file(pack.name))
                    copies = [(r, data[r.offset:r.offset + r.stored_length]) for r in pack.records
                              if r.block_id in live and index.pack_of(r.block_id) == pack.name]
                    for record, stored in copies:
                        self.store.blocks.codec.decode(stored, record.codec, record.block_id, record.plain_length)
                except (OSError, ChunkCorruptError) as e:
                    # Something live in it does not read back: keep the pack, verify will name it.
                    self.problems.append(f"pack {pack.name} not repacked, kept: {e}")
                    unreadable.append(pack)
                    continue
                for record, stored in copies:
                    writers[record.kind].append(record.block_id, record.kind, record.codec, stored,
                                                record.plain_length)
            written = [*writers[DATA].finish(), *writers[PAGE].finish()]
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        for pack in unreadable:
            plan.repack.remove(pack)
        infos = [PackInfo(p.name, p.size, 0, p.records) for p in written]
        if infos:
            write_index_file(backend, infos)
        return infos

    def _retire(self, packs: list[PackInfo]) -> None:
        """Move each pack aside, then delete those no writer touched meanwhile."""
        backend = self.store.backend
        moved = []
        for pack in packs:
            try:
                backend.rename(pack_file(pack.name), trash_name(pack.name))
            except FileNotFoundError:
                continue
            moved.append(pack)
        for pack in moved:
            if _mtime(self.store, trash_name(pack.name)) >= self.cutoff_ns:
                backend.rename(trash_name(pack.name), pack_file(pack.name))
            else:
                backend.remove(trash_name(pack.name))

    def _settle_leftover_trash(self, live: set[bytes]) -> None:
        """`.gc` packs a crashed GC left: back, if anything could still need them; else gone."""
        backend = self.store.backend
        index = self.store.blocks.index
        for entry, directory in _pack_dir_entries(self.store):
            if not (entry.name.startswith(".") and entry.name.endswith(TRASH_SUFFIX)):
                continue
            pack = entry.name[1:-len(TRASH_SUFFIX)]
            if not is_pack_name(pack):
                continue
            try:
                records = read_trailer(backend, join(directory, entry.name), entry.size)
            except PackFormatError as e:
                self.problems.append(f"trashed pack {pack} kept: {e}")
                records = []
                needed = True
            else:
                needed = any(r.block_id in live and _only_in(index, r.block_id, pack) for r in records)
            if self.dry_run:
                continue
            if needed or entry.mtime_ns >= self.cutoff_ns:
                backend.rename(join(directory, entry.name), pack_file(pack))
                if records:
                    index.add(PackInfo(pack, entry.size, entry.mtime_ns, tuple(records)))
            else:
                backend.remove(join(directory, entry.name))

    def _consolidate(self, index_files: list[str]) -> None:
        """One index file for every pack there is now; then the files read at the start go."""
        backend = self.store.backend
        self.store.blocks.reload()
        index = self.store.blocks.index
        present = list_packs(backend)
        infos = [info for name, info in sorted(index.packs.items()) if name in present]
        if infos:
            write_index_file(backend, infos)
        for name in index_files:
            backend.remove(join(INDEX_DIR, name))
        self.store.blocks.reload()

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

    def _sweep_temp_files(self) -> None:
        places = [(join(d, e.name), e) for e, d in _pack_dir_entries(self.store)]
        places += [(join(INDEX_DIR, e.name), e) for e in self.store.backend.list(INDEX_DIR)]
        for directory in self.store.backup_dirs():
            places += [(directory.file(e.name), e) for e in self.store.backend.list(directory.name)]
        for name, entry in places:
            base = name.rsplit("/", 1)[-1]
            if base.startswith(".") and base.endswith(TEMP_SUFFIX) and entry.mtime_ns < self.cutoff_ns:
                if not self.dry_run:
                    self.store.backend.remove(name)
                self.temp_files += 1


def _only_in(index: BlockIndex, block_id: bytes, pack: str) -> bool:
    """Whether no pack but `pack` (itself in the trash) holds the block."""
    found = index.get(block_id)
    return found is None or found[0] == pack or index.packs[found[0]].trashed


def _pack_dir_entries(store: Store) -> list[tuple[Entry, str]]:
    """(entry, directory) of every file in the packs/<hh>/ directories."""
    found = []
    for prefix in store.backend.list(PACKS_DIR):
        if prefix.is_dir and len(prefix.name) == 2:
            directory = join(PACKS_DIR, prefix.name)
            found += [(e, directory) for e in store.backend.list(directory) if not e.is_dir]
    return found


def _mtime(store: Store, name: str) -> int:
    entry = store.backend.stat(name)
    if entry is None:
        raise FileNotFoundError(f"{store.location}/{name} vanished during GC")
    return entry.mtime_ns


def _ns(delta: timedelta) -> int:
    return round(delta.total_seconds() * 1e9)
