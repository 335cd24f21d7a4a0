"""Writing one backup: a BackupSession with one DiskWriter per disk.

The caller reads the source and hands chunks over with put(); hashing,
zero detection, compression and the chunk file write run on the session's
worker pool so reading overlaps with them. put() blocks when the pool's
queue is full, so memory stays at a few chunks per worker whatever the disk
size. put() takes ownership of the buffer: the caller must not modify it
afterwards (pass a fresh buffer per chunk).

Nothing is visible to readers until commit() writes the manifest; abort()
removes the backup directory. Chunks written before an abort stay in the
store: they are content-addressed and may already be shared, so only a
garbage collection pass that sees every index can remove them.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, Self

from .codec import DIGEST_SIZE, ZERO_DIGEST, content_digest
from .errors import (
    BackupIncompleteError,
    BackupWriteError,
    ChunkWriteError,
    DiskNotFoundError,
    IndexCorruptError,
)
from .index import FixedIndex, chunk_count, chunk_length
from .manifest import MANIFEST_FILE, BackupKind, BackupManifest, DiskEntry, DiskStats
from .names import check_name
from .pipeline import JobPipeline

if TYPE_CHECKING:
    from .leases import WriterLease
    from .store import BackupDir, Store

_Buffer = bytes | bytearray | memoryview


class BackupSession:
    def __init__(
        self,
        store: Store,
        backup_dir: BackupDir,
        lease: WriterLease,
        *,
        vm: str,
        backup_id: str,
        created: datetime,
        kind: BackupKind,
        parent: BackupManifest | None,
        checkpoint: str | None,
        vm_definition: dict[str, Any],
        workers: int,
    ) -> None:
        self.store = store
        self.vm = vm
        self.backup_id = backup_id
        self.created = created
        self.kind = kind
        self.parent = parent
        self.checkpoint = checkpoint
        self.vm_definition = vm_definition
        self._dir = backup_dir
        self._lease = lease
        self._pipeline = JobPipeline(workers)
        self._disks: dict[str, DiskWriter] = {}
        self._notes: list[str] = []
        # Digests this session is storing, so two workers that meet the same
        # new chunk at once write it once and count it once.
        self._claimed: set[bytes] = set()
        self._claimed_lock = threading.Lock()
        # calloc'd and never written: costs no memory, and comparing against
        # it is a memcmp.
        self._zero_chunk = bytes(store.chunk_size)
        self._state = "open"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Leaving the block without commit() is a failure whatever the
        # reason: the backup must not be half there.
        self.abort()

    def disk(self, name: str, size: int) -> DiskWriter:
        """Start writing a disk of `size` bytes; chunks can then be put in any order."""
        self._check_open()
        check_name("disk name", name)
        if name in self._disks:
            raise BackupWriteError(f"backup {self.backup_id}: disk {name!r} was already added")
        if not isinstance(size, int) or size < 0:
            raise BackupWriteError(f"backup {self.backup_id}: disk {name!r} has invalid size {size!r}")
        writer = DiskWriter(self, name, size, self._parent_index(name))
        self._disks[name] = writer
        return writer

    def note(self, text: str) -> None:
        """Record something a restore or an operator should know about this backup."""
        self._check_open()
        self._notes.append(text)

    def commit(self) -> BackupManifest:
        """Wait for all chunks, then write the indexes and, last, the manifest."""
        self._check_open()
        self._pipeline.drain()
        if not self._disks:
            raise BackupIncompleteError(f"backup {self.backup_id} has no disks")
        for writer in self._disks.values():
            writer.check_complete()
        disks = tuple(writer.write_index(self._dir) for writer in self._disks.values())
        manifest = BackupManifest(
            backup_id=self.backup_id,
            vm=self.vm,
            created=self.created,
            kind=self.kind,
            parent=self.parent.backup_id if self.parent else None,
            checkpoint=self.checkpoint,
            vm_definition=self.vm_definition,
            disks=disks,
            notes=tuple(self._notes),
        )
        self.store.write_sealed(self._dir.file(MANIFEST_FILE), manifest.to_json())
        self._state = "committed"
        self._pipeline.close()
        self._lease.release()
        return manifest

    def abort(self) -> None:
        """Discard the backup. Does nothing once committed or aborted."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._pipeline.close()
        self.store.backend.remove_tree(self._dir.name)
        self._lease.release()

    def _check_open(self) -> None:
        if self._state != "open":
            raise BackupWriteError(f"backup {self.backup_id} is already {self._state}")

    def _parent_index(self, name: str) -> FixedIndex | None:
        if self.parent is None:
            return None
        try:
            return self.store.read_index(self.parent, name)
        except DiskNotFoundError:
            return None
        except IndexCorruptError as e:
            self.note(f"parent index of {name} unusable, nothing reused from it: {e}")
            return None

    def _claim(self, digest: bytes) -> bool:
        """True for the first caller in this session to see digest."""
        with self._claimed_lock:
            if digest in self._claimed:
                return False
            self._claimed.add(digest)
            return True


class DiskWriter:
    """Collects the chunk ids of one disk; each chunk is given exactly once."""

    def __init__(self, session: BackupSession, name: str, size: int, parent_index: FixedIndex | None) -> None:
        self.name = name
        self.size = size
        self.chunk_size = session.store.chunk_size
        self.chunk_count = chunk_count(size, self.chunk_size)
        self._session = session
        self._chunks = session.store.chunks
        self._parent_index = parent_index
        self._digests = bytearray(self.chunk_count * DIGEST_SIZE)
        self._given = bytearray(self.chunk_count)
        self._stats = DiskStats(chunks_total=self.chunk_count)
        self._lock = threading.Lock()

    @property
    def bytes_read(self) -> int:
        return self._stats.bytes_read

    def record_read(self, nbytes: int) -> None:
        """Account bytes read from the source (put() cannot know: a caller may
        read only the allocated parts of a chunk)."""
        with self._lock:
            self._stats.bytes_read += nbytes

    def chunk_length(self, chunk_no: int) -> int:
        self._check_chunk_no(chunk_no)
        return chunk_length(self.size, self.chunk_size, chunk_no)

    def put(self, chunk_no: int, data: _Buffer) -> None:
        """Store the chunk's content; blocks while the worker queue is full.

        Raises ChunkWriteError if an earlier chunk of the session failed.
        """
        self._session._check_open()
        expected = self.chunk_length(chunk_no)
        got = memoryview(data).nbytes
        if got != expected:
            raise BackupWriteError(f"disk {self.name} chunk {chunk_no}: got {got} bytes, expected {expected}")
        self._take(chunk_no)
        self._session._pipeline.submit(lambda: self._store(chunk_no, data))

    def zero(self, chunk_no: int) -> None:
        """Declare the chunk all zeros without reading it."""
        self._session._check_open()
        self._check_chunk_no(chunk_no)
        self._take(chunk_no)
        with self._lock:
            self._stats.chunks_zero += 1

    def reuse(self, chunk_no: int) -> bool:
        """Take the parent's id for the chunk without reading it.

        Returns False, changing nothing, when the parent cannot supply it: no
        parent index for this disk, the disk grew so the parent's chunk is
        absent or shorter, or the parent's chunk file is gone from the store.
        The caller must then read the chunk and put() it.
        """
        self._session._check_open()
        length = self.chunk_length(chunk_no)
        parent = self._parent_index
        if parent is None or chunk_no >= parent.chunk_count or parent.chunk_length(chunk_no) != length:
            return False
        digest = parent.digest(chunk_no)
        if digest != ZERO_DIGEST and not self._chunks.touch(digest):
            return False
        self._take(chunk_no)
        with self._lock:
            self._set_digest(chunk_no, digest)
            self._stats.chunks_reused += 1
        return True

    def check_complete(self) -> None:
        missing = self._given.count(0)
        if missing:
            first = islice((n for n, given in enumerate(self._given) if not given), 10)
            shown = ", ".join(map(str, first)) + (", ..." if missing > 10 else "")
            raise BackupIncompleteError(
                f"backup {self._session.backup_id}: disk {self.name} has {missing} of "
                f"{self.chunk_count} chunks never put, zeroed or reused: {shown}"
            )

    def write_index(self, backup_dir: BackupDir) -> DiskEntry:
        index = FixedIndex(self.chunk_size, self.size, bytes(self._digests)).to_bytes()
        file_name = f"{self.name}.index"
        self._session.store.write_sealed(backup_dir.file(file_name), index)
        return DiskEntry(
            name=self.name,
            size=self.size,
            chunk_size=self.chunk_size,
            index=file_name,
            index_digest=content_digest(index).hex(),
            stats=replace(self._stats),
        )

    def _store(self, chunk_no: int, data: _Buffer) -> None:
        """Worker side of put()."""
        try:
            if self._session._zero_chunk.startswith(data):
                with self._lock:
                    self._stats.chunks_zero += 1
                return
            digest = self._chunks.codec.chunk_id(data)
            if self._session._claim(digest) and not self._chunks.touch(digest):
                stored = self._chunks.insert(digest, data)
                with self._lock:
                    self._set_digest(chunk_no, digest)
                    self._stats.chunks_written += 1
                    self._stats.bytes_stored += stored
            else:
                with self._lock:
                    self._set_digest(chunk_no, digest)
                    self._stats.chunks_deduplicated += 1
        except Exception as e:
            raise ChunkWriteError(
                f"backup {self._session.backup_id}: disk {self.name} chunk {chunk_no} could not be stored: {e}"
            ) from e

    def _check_chunk_no(self, chunk_no: int) -> None:
        if not isinstance(chunk_no, int) or not 0 <= chunk_no < self.chunk_count:
            raise BackupWriteError(f"disk {self.name}: chunk {chunk_no!r} out of range (0..{self.chunk_count - 1})")

    def _take(self, chunk_no: int) -> None:
        with self._lock:
            if self._given[chunk_no]:
                raise BackupWriteError(f"disk {self.name}: chunk {chunk_no} was already given")
            self._given[chunk_no] = 1

    def _set_digest(self, chunk_no: int, digest: bytes) -> None:
        start = chunk_no * DIGEST_SIZE
        self._digests[start : start + DIGEST_SIZE] = digest
