"""Restore one disk of a backup from the store into a new image file.

The image is built under a hidden partial name next to the target and
renamed over it only when every chunk was verified and written and the data
is durable; on any failure the partial file is deleted, so the target path
never holds a half-restored disk.

Restores are thin: all-zero chunks are skipped from the index alone, and
inside data chunks all-zero 64 KiB blocks (the qcow2 cluster size) are
skipped too, so the image allocates only what held data.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dedup import BackupManifest, ChunkCorruptError, ChunkMissingError, DiskEntry, FixedIndex, Store
from dedup.fsutil import fsync_dir

from .errors import CorruptBackupError, DiskSelectionError, TargetDirectoryError, TargetExistsError
from .targets import RestoreTarget, create_target

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


def restore_disk(
    store: Store,
    backup_id: str,
    disk_name: str | None,
    target: str | os.PathLike[str],
    fmt: str = "raw",
    force: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Write disk `disk_name` of backup `backup_id` to `target` as a raw or qcow2 image.

    disk_name may be None when the backup has exactly one disk. An existing
    target is replaced only with force=True. progress, if given, is called
    with (bytes done, disk size) as the restore advances.
    """
    started = time.monotonic()
    manifest = store.get_backup(backup_id)
    disk = _select_disk(manifest, disk_name)
    index = store.read_index(manifest, disk.name)
    target = Path(target)
    _check_target(target, force)
    partial = target.with_name(f".{target.name}.cairn-partial")
    # A leftover of an interrupted restore to the same target.
    partial.unlink(missing_ok=True)
    try:
        image = create_target(fmt, partial, disk.size)
        try:
            copy = _ChunkCopy(store, manifest, disk, index, image, progress)
            copy.run()
            image.finish()
        except BaseException:
            image.abort()
            raise
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return RestoreResult(copy.bytes_written, index.chunk_count, copy.zero_chunks, time.monotonic() - started)


def _select_disk(manifest: BackupManifest, disk_name: str | None) -> DiskEntry:
    if disk_name is not None:
        return manifest.disk(disk_name)
    if len(manifest.disks) != 1:
        names = ", ".join(d.name for d in manifest.disks)
        raise DiskSelectionError(f"backup {manifest.backup_id} has {len(manifest.disks)} disks ({names}): name one")
    return manifest.disks[0]


def _check_target(target: Path, force: bool) -> None:
    if not target.parent.is_dir():
        raise TargetDirectoryError(f"cannot restore to {target}: directory {target.parent} does not exist")
    # Replacing a directory or a device node with an image file is never
    # what was meant, force or not.
    if target.exists() and not target.is_file():
        raise TargetExistsError(f"cannot restore to {target}: it exists and is not a regular file")
    if (target.exists() or target.is_symlink()) and not force:
        raise TargetExistsError(f"{target} already exists; restore with force to replace it")


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
    ) -> None:
        self._store = store
        self._manifest = manifest
        self._disk = disk
        self._index = index
        self._image = image
        self._progress = progress
        self.bytes_written = 0
        self.zero_chunks = 0

    def run(self) -> None:
        pool = ThreadPoolExecutor(READERS, thread_name_prefix="cairn-restore")
        try:
            reading: deque[tuple[int, Future[bytes]]] = deque()
            for chunk_no in range(self._index.chunk_count):
                if self._index.is_zero(chunk_no):
                    self.zero_chunks += 1
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
        view = memoryview(data)
        for start, end in data_runs(view):
            self._image.write_at(offset + start, view[start:end])
            self.bytes_written += end - start
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


def data_runs(data: memoryview, block_size: int = ZERO_BLOCK_SIZE) -> Iterator[tuple[int, int]]:
    """(start, end) of the maximal runs of blocks that are not all zero."""
    run_start = None
    for start in range(0, len(data), block_size):
        if _ZERO_BLOCK.startswith(data[start : start + block_size]):
            if run_start is not None:
                yield run_start, start
                run_start = None
        elif run_start is None:
            run_start = start
    if run_start is not None:
        yield run_start, len(data)
