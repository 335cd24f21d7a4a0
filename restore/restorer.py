"""Restore one disk of a backup from the store into a destination.

New image files are built under a hidden partial name and renamed over the
target only when every chunk was verified and written (and, with verify,
read back and compared) and the data is durable; on any failure the partial
file is deleted, so the target path never holds a half-restored disk.

Restores are thin: all-zero chunks are skipped from the index alone, and
inside data chunks all-zero 64 KiB blocks (the qcow2 cluster size) are
skipped too, so the image allocates only what held data. A destination that
already holds data gets those ranges as write-zeroes instead.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from dedup import (
    BackupManifest,
    ChunkCorruptError,
    ChunkMissingError,
    DiskEntry,
    FixedIndex,
    Store,
)

from .destinations import Destination, parse_destination
from .errors import CorruptBackupError, DiskSelectionError
from .targets import RestoreTarget
from .verify import ReadBack, verify_target

ZERO_BLOCK_SIZE = 64 << 10
_ZERO_BLOCK = bytes(ZERO_BLOCK_SIZE)
# Chunks read, decompressed and verified ahead of the writer; the bound keeps
# memory at a few chunks.
READERS = min(4, os.cpu_count() or 1)
READ_AHEAD = 2 * READERS

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RestoreResult:
    bytes_written: int  # data bytes written; skipped zeros excluded
    chunks: int  # chunks in the disk, zero ones included
    zero_chunks: int
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

    target is a Destination or what parse_destination() understands (a file
    path, written as `fmt` raw or qcow2; a block device; an NBD URL).
    disk_name may be None when the backup has exactly one disk. An existing
    target is replaced only with force=True. verify reads the target back
    and compares it chunk by chunk before the restore counts as done.
    progress and verify_progress, if given, are called with (bytes done,
    disk size) as the copy and the read-back advance.
    """
    started = time.monotonic()
    manifest = store.get_backup(backup_id)
    disk = select_disk(manifest, disk_name)
    index = store.read_index(manifest, disk.name)
    destination = target if not isinstance(target, (str, os.PathLike)) else parse_destination(target, fmt, force)
    image = destination.open(disk.size)
    try:
        try:
            copy = _ChunkCopy(store, manifest, disk, index, image, progress, ReadBack(index) if verify else None)
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
    return RestoreResult(copy.bytes_written, index.chunk_count, copy.zero_chunks, time.monotonic() - started,
                         verified=verify)


def select_disk(manifest: BackupManifest, disk_name: str | None) -> DiskEntry:
    if disk_name is not None:
        return manifest.disk(disk_name)
    if len(manifest.disks) != 1:
        names = ", ".join(d.name for d in manifest.disks)
        raise DiskSelectionError(f"backup {manifest.backup_id} has {len(manifest.disks)} disks ({names}): name one")
    return manifest.disks[0]


class _ChunkCopy:
    """Copies the data chunks in disk order while the next ones are read,
    decompressed and verified on a small thread pool."""

    def __init__(
        self,
        store: Store,
        manifest: BackupManifest,
        disk: DiskEntry,
        index: FixedIndex,
        image: RestoreTarget,
        progress: Progress | None,
        read_back: ReadBack | None,
    ) -> None:
        self._store = store
        self._manifest = manifest
        self._disk = disk
        self._index = index
        self._image = image
        self._progress = progress
        self.read_back = read_back
        self.bytes_written = 0
        self.zero_chunks = 0

    def run(self) -> None:
        pool = ThreadPoolExecutor(READERS, thread_name_prefix="cairn-restore")
        try:
            reading: deque[tuple[int, Future[bytes]]] = deque()
            for chunk_no in range(self._index.chunk_count):
                if self._index.is_zero(chunk_no):
                    self.zero_chunks += 1
                    self._image.zero_at(self._index.chunk_offset(chunk_no), self._index.chunk_length(chunk_no))
                    continue
                reading.append((chunk_no, pool.submit(self._store.read_chunk, self._index.digest(chunk_no))))
                if len(reading) >= READ_AHEAD:
                    self._write(*reading.popleft())
            while reading:
                self._write(*reading.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        self._report(self._disk.size)

    def _write(self, chunk_no: int, read: Future[bytes]) -> None:
        offset = self._index.chunk_offset(chunk_no)
        data = self._verified(chunk_no, read)
        if self.read_back is not None:
            self.read_back.expect(chunk_no, data)
        view = memoryview(data)
        for start, end, has_data in block_runs(view):
            if has_data:
                self._image.write_at(offset + start, view[start:end])
                self.bytes_written += end - start
            else:
                self._image.zero_at(offset + start, end - start)
        self._report(offset + len(data))

    def _verified(self, chunk_no: int, read: Future[bytes]) -> bytes:
        chunk_id = self._index.digest(chunk_no).hex()
        try:
            data = read.result()
        except (ChunkCorruptError, ChunkMissingError) as e:
            raise self._corrupt(chunk_no, chunk_id, str(e)) from e
        # The id covers the content, so this only trips on a writer bug; it
        # keeps such a bug from writing past the chunk's range.
        expected = self._index.chunk_length(chunk_no)
        if len(data) != expected:
            raise self._corrupt(chunk_no, chunk_id, f"chunk {chunk_id} has {len(data)} bytes, expected {expected}")
        return data

    def _corrupt(self, chunk_no: int, chunk_id: str, reason: str) -> CorruptBackupError:
        backup_id, disk = self._manifest.backup_id, self._disk.name
        return CorruptBackupError(
            f"backup {backup_id} disk {disk} cannot be restored: chunk {chunk_no} "
            f"(offset {self._index.chunk_offset(chunk_no)}): {reason}",
            backup_id=backup_id,
            disk=disk,
            chunk_no=chunk_no,
            chunk_id=chunk_id,
        )

    def _report(self, done: int) -> None:
        if self._progress is not None:
            self._progress(done, self._disk.size)


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
