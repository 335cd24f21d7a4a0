"""`cairn store upgrade`: turn a format-1 store into format 2 in place, without losing a backup.

1. Take the GC lock (no GC, repair or other upgrade meanwhile).
2. Write config.json as format 2 (same id, key and compression level): from then on new
   backups are format 2 and readers accept both kinds of manifest (each says its version).
3. Convert each format-1 backup, oldest first: its chunks are read in disk order and given to
   a BackupSession writing into the same backup directory, under a writer lease like any
   backup; the new manifest, with the old one's id, time, kind, parent, checkpoint, VM
   definition and notes, then replaces the old one in one atomic write, and the old index
   files go. A chunk met again in a later backup is not read again: its blocks are linked.
4. When no format-1 manifest is left, chunks/ is removed.

Killed at any point, the store is consistent: a backup is converted exactly when its manifest
says format 2, packs of an interrupted conversion are found through their trailers (and
deduplicated against by the next run, or removed by GC), and running the upgrade again
carries on where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .blockindex import INDEX_DIR
from .errors import StoreError
from .gc import hold_gc_lock
from .leases import WriterLease
from .legacy import CHUNKS_DIR
from .manifest import BackupManifest, ChunkIndexRef
from .maps import MapEntry
from .packs import PACKS_DIR
from .store import DEFAULT_BLOCK_SIZE, DEFAULT_PACK_SIZE, BackupDir, DiskMap, Store
from .writer import BackupSession, DiskWriter

# progress(backups converted, backups to convert)
UpgradeProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class UpgradeReport:
    converted: tuple[str, ...]  # backup ids converted by this run
    already: int  # format-2 backups found
    bytes_stored: int
    chunks_removed: bool  # chunks/ is gone: the upgrade is complete
    seconds: float


def upgrade_store(store: Store, block_size: int = DEFAULT_BLOCK_SIZE, pack_size: int = DEFAULT_PACK_SIZE,
                  progress: UpgradeProgress | None = None, workers: int | None = None) -> UpgradeReport:
    """Convert the store to format 2 (block_size and pack_size apply when it is still format 1)."""
    started = time.monotonic()
    lock = hold_gc_lock(store, "upgrade")
    try:
        if store.config.layout == 1:
            for directory in (PACKS_DIR, INDEX_DIR):
                store.backend.make_dir(directory)
            config = store.config.upgraded(block_size, pack_size)
            config.save(store.backend)
            store = store.with_config(config)
        listing = store.scan_backups()
        if listing.unreadable:
            named = "; ".join(f"{u.vm}/{u.backup_id}: {u.error}" for u in listing.unreadable)
            raise StoreError(f"upgrade stopped before converting anything: {len(listing.unreadable)} backup(s) cannot "
                             f"be read, and their chunks would be lost with chunks/. Repair or prune them: {named}")
        pending = [m for m in listing.manifests if m.format_version == 1]
        converter = _Converter(store, workers or os.cpu_count() or 1)
        for done, manifest in enumerate(pending, 1):
            converter.convert(manifest)
            if progress:
                progress(done, len(pending))
        store.backend.remove_tree(CHUNKS_DIR)
    finally:
        lock.release()
    return UpgradeReport(tuple(m.backup_id for m in pending), len(listing.manifests) - len(pending),
                         converter.bytes_stored, True, time.monotonic() - started)


class _Converter:
    def __init__(self, store: Store, workers: int) -> None:
        self.store = store
        self.workers = workers
        self.bytes_stored = 0
        # Chunk id -> its extents in the converted map, relative to the chunk's start.
        self._converted: dict[bytes, list[MapEntry]] = {}

    def convert(self, old: BackupManifest) -> None:
        directory = BackupDir(old.vm, old.backup_id)
        lease = WriterLease.take_over(self.store.backend, old.vm, old.backup_id)
        session = BackupSession(self.store, directory, lease, vm=old.vm, backup_id=old.backup_id,
                                created=old.created, kind=old.kind, parent=None, checkpoint=old.checkpoint,
                                vm_definition=old.vm_definition, workers=self.workers, rewrite=True)
        with session:
            writers = []
            for disk in old.disks:
                writers.append(writer := session.disk(disk.name, disk.size))
                self._copy(writer, self.store.disk_map(old, disk))
            sealed = session.seal()
            manifest = replace(sealed, parent=old.parent, notes=old.notes)
            self.bytes_stored += sum(writer.bytes_stored for writer in writers)
            self._remember(manifest, old)
            session.publish(manifest)
        for disk in old.disks:
            if isinstance(disk.layout, ChunkIndexRef):
                self.store.backend.remove(directory.file(disk.layout.index))

    def _copy(self, writer: DiskWriter, disk_map: DiskMap) -> None:
        entries = list(disk_map.entries())
        fresh = [e.block_id for e in entries if e.block_id not in self._converted]
        chunks = disk_map.blocks.fetch(fresh, self.workers)
        position = 0
        for entry in entries:
            if entry.offset > position:
                writer.zero(position, entry.offset - position)
            if not self._link(writer, entry):
                block_id, data = next(chunks)
                if isinstance(data, StoreError):
                    raise StoreError(f"upgrade stopped: chunk {block_id.hex()} of disk {disk_map.name} cannot be read "
                                     f"({data}); repair the store or prune the backups that use it") from data
                writer.put(entry.offset, memoryview(data)[entry.block_offset:entry.block_offset + entry.length])
            position = entry.end
        if position < disk_map.size:
            writer.zero(position, disk_map.size - position)

    def _link(self, writer: DiskWriter, chunk: MapEntry) -> bool:
        """Give a chunk converted before as links to its blocks (holes as zeros); False if it was
        not converted yet."""
        parts = self._converted.get(chunk.block_id)
        if parts is None:
            return False
        position = chunk.offset
        for part in parts:
            offset = chunk.offset + part.offset
            if offset > position:
                writer.zero(position, offset - position)
            if not writer.link(offset, part.length, part.block_id, part.block_offset):
                raise StoreError(f"block {part.block_id.hex()} written by this upgrade is gone from the store")
            position = offset + part.length
        if position < chunk.end:
            writer.zero(position, chunk.end - position)
        return True

    def _remember(self, new: BackupManifest, old: BackupManifest) -> None:
        """The extents each chunk of `old` became, so a later backup links them."""
        for disk in old.disks:
            converted = self.store.disk_map(new, disk.name)
            for chunk in self.store.disk_map(old, disk).entries():
                if chunk.block_id not in self._converted:
                    self._converted[chunk.block_id] = [
                        MapEntry(e.offset - chunk.offset, e.length, e.block_id, e.block_offset)
                        for e in converted.entries(chunk.offset, chunk.end)]
