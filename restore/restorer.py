"""Restore one disk of a backup from the store into a destination.

The disk's map (dedup.DiskMap) says which block holds each byte; everything else is a hole.
The map is taken a window at a time (up to WINDOW_BYTES of data, in disk order); the blocks
of a window are fetched in pack order, read in long ranged reads and decoded (decrypted,
decompressed, checked against their ids) on a thread pool, and each block's bytes are written
to every place of the window that uses it as soon as it arrives. A full backup's packs are in
disk order, so this reads the packs front to back; a fragmented incremental's map still reads
each pack once per window. There is no chain to replay: every backup's map is complete.

New image files are built under a hidden partial name and renamed over the target only when
every block was verified and written (and, with verify, read back and compared) and the data
is durable; on any failure the partial file is deleted, so the target path never holds a
half-restored disk.

The blocks are written on a pool of writer threads, as many as the target takes at once
(RestoreTarget.concurrent_writes), while the next ones are decoded.

Restores are thin: holes are never written, and inside data all-zero 64 KiB runs (the qcow2
cluster size) are skipped too, so the image allocates only what held data. A destination
that already holds data gets those ranges as write-zeroes instead.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dedup import BackupManifest, DiskEntry, DiskMap, MapEntry, Store, StoreError
from dedup.pipeline import JobPipeline

from .destinations import Destination, parse_destination
from .errors import CorruptBackupError, DiskSelectionError
from .targets import WRITERS, RestoreTarget
from .verify import ReadBack, verify_target

ZERO_BLOCK_SIZE = 64 << 10
_ZERO_BLOCK = bytes(ZERO_BLOCK_SIZE)
# Data restored per window: its blocks are fetched in pack order, its extents kept in memory.
WINDOW_BYTES = 256 << 20
WINDOW_EXTENTS = 1 << 16
READERS = os.cpu_count() or 1

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RestoreResult:
    bytes_written: int  # data bytes written; skipped zeros excluded
    blocks: int  # distinct blocks read
    hole_bytes: int  # bytes of the disk the map has no data for
    seconds: float
    verified: bool = False  # the target was read back and matched


def restore_disk(
    store: Store,
    backup_id: str,
    disk_name: str | None,
    target: str | os.PathLike[str] | Destination,
    fmt: str = "raw",
    force: bool = False,
    progress: Progress | None = None,
    verify: bool = False,
    verify_progress: Progress | None = None,
) -> RestoreResult:
    """Write disk `disk_name` of backup `backup_id` to `target`.

    target is a Destination or what parse_destination() understands (a file path, written as
    `fmt` raw or qcow2; a block device; an NBD URL). disk_name may be None when the backup has
    exactly one disk. An existing target is replaced only with force=True. verify reads the
    target back and compares it with what was written before the restore counts as done.
    progress and verify_progress, if given, are called with (bytes done, disk size) as the
    copy and the read-back advance.
    """
    started = time.monotonic()
    manifest = store.get_backup(backup_id)
    disk = select_disk(manifest, disk_name)
    disk_map = store.disk_map(manifest, disk)
    destination = target if not isinstance(target, (str, os.PathLike)) else parse_destination(target, fmt, force)
    image = destination.open(disk.size)
    try:
        try:
            copy = _MapCopy(manifest, disk_map, image, progress, ReadBack(disk.size) if verify else None)
            copy.run()
            if copy.read_back is not None:
                verify_target(image, copy.read_back, f"{backup_id} disk {disk.name} in {destination.description}",
                              verify_progress)
            image.finish()
        except BaseException:
            image.abort()
            raise
        destination.commit()
    except BaseException:
        destination.discard()
        raise
    return RestoreResult(copy.bytes_written, copy.blocks, copy.hole_bytes, time.monotonic() - started,
                         verified=verify)


def select_disk(manifest: BackupManifest, disk_name: str | None) -> DiskEntry:
    if disk_name is not None:
        return manifest.disk(disk_name)
    if len(manifest.disks) != 1:
        names = ", ".join(d.name for d in manifest.disks)
        raise DiskSelectionError(f"backup {manifest.backup_id} has {len(manifest.disks)} disks ({names}): name one")
    return manifest.disks[0]


class _MapCopy:
    """Copies a disk window by window: holes first, then each block to every place it goes."""

    def __init__(self, manifest: BackupManifest, disk_map: DiskMap, image: RestoreTarget,
                 progress: Progress | None, read_back: ReadBack | None) -> None:
        self._manifest = manifest
        self._map = disk_map
        self._image = image
        self._progress = progress
        self.read_back = read_back
        self.bytes_written = 0
        self.blocks = 0
        self.hole_bytes = 0
        self._done = 0
        self._lock = threading.Lock()  # the writers' counters and progress

    def run(self) -> None:
        writes = JobPipeline(min(self._image.concurrent_writes, WRITERS))
        try:
            position = 0
            for window in _windows(self._map.entries()):
                users: dict[bytes, list[MapEntry]] = {}
                for entry in window:
                    if entry.offset > position:
                        self._hole(position, entry.offset - position)
                    users.setdefault(entry.block_id, []).append(entry)
                    position = entry.end
                for block_id, outcome in self._map.blocks.fetch(users, READERS):
                    if isinstance(outcome, StoreError):
                        raise self._corrupt(users[block_id][0], str(outcome)) from outcome
                    self.blocks += 1
                    for entry in users[block_id]:
                        writes.submit(functools.partial(self._write, entry, outcome))
            if position < self._map.size:
                self._hole(position, self._map.size - position)
            writes.drain()
        finally:
            writes.close()

    def _hole(self, offset: int, length: int) -> None:
        self._image.zero_at(offset, length)
        with self._lock:
            self.hole_bytes += length
            self._advance(length)

    def _write(self, entry: MapEntry, block: bytes) -> None:
        """On a writer thread."""
        if entry.block_offset + entry.length > len(block):
            raise self._corrupt(entry, f"block {entry.block_id.hex()} has {len(block)} bytes, the map uses "
                                       f"{entry.block_offset + entry.length}")
        view = memoryview(block)[entry.block_offset:entry.block_offset + entry.length]
        if self.read_back is not None:
            self.read_back.expect(entry.offset, view)
        written = 0
        for start, end, has_data in block_runs(view):
            if has_data:
                self._image.write_at(entry.offset + start, view[start:end])
                written += end - start
            else:
                self._image.zero_at(entry.offset + start, end - start)
        with self._lock:
            self.bytes_written += written
            self._advance(entry.length)

    def _advance(self, length: int) -> None:
        self._done += length
        if self._progress is not None:
            self._progress(self._done, self._map.size)

    def _corrupt(self, entry: MapEntry, reason: str) -> CorruptBackupError:
        backup_id, disk = self._manifest.backup_id, self._map.name
        return CorruptBackupError(
            f"backup {backup_id} disk {disk} cannot be restored: bytes from offset {entry.offset}: {reason}",
            backup_id=backup_id, disk=disk, offset=entry.offset, chunk_id=entry.block_id.hex())


def _windows(entries: Iterator[MapEntry]) -> Iterator[list[MapEntry]]:
    window: list[MapEntry] = []
    data = 0
    for entry in entries:
        window.append(entry)
        data += entry.length
        if data >= WINDOW_BYTES or len(window) >= WINDOW_EXTENTS:
            yield window
            window, data = [], 0
    if window:
        yield window


def block_runs(data: memoryview, block_size: int = ZERO_BLOCK_SIZE) -> Iterator[tuple[int, int, bool]]:
    """(start, end, has_data) of the maximal runs of blocks that are all zero or not."""
    run_start, run_data = 0, None
    for start in range(0, len(data), block_size):
        has_data = not _ZERO_BLOCK.startswith(data[start : start + block_size])
        if has_data != run_data:
            if run_data is not None:
                yield run_start, start, run_data
            run_start, run_data = start, has_data
    if run_data is not None:
        yield run_start, len(data), run_data
