"""Where a restore writes: one small protocol, one class per kind of writer.

A target is either created empty (a new image file: unwritten ranges already
read as zeros, so zero_at does nothing and the result stays thin) or it
already holds data (a block device, an NBD export): then zero_at writes
zeros, as write-zeroes/trim where the backend can, so nothing is allocated
that was not.
"""

from __future__ import annotations

import os
import queue
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from .errors import TargetWriteError
from .nbd_target import NbdTarget, QemuNbdServer

# Threads a restore writes with, and its connections to a private qemu-nbd: two per core, so
# a writer waiting on the kernel or on QEMU never leaves a core idle.
WRITERS = 2 * (os.cpu_count() or 1)
# A file target is written at most 1 MiB per pwrite. Whole 2 MiB blocks written at 2 MiB-aligned
# offsets cost this machine's kernel (6.18, ext4 with large folios) 2.5x the system time of the
# same bytes in 1 MiB writes: restoring bench/disk.py's disk took 0.97-1.46 s of system time
# against 0.36-0.41 s, and 2.3-2.7 s against 1.7 s (256 KiB and 512 KiB pieces: the same as 1 MiB).
FILE_WRITE_PIECE = 1 << 20


class RestoreTarget(Protocol):
    # How many write_at and zero_at calls may run at once, each on its own thread.
    concurrent_writes: int

    def write_at(self, offset: int, data: bytes | memoryview) -> None: ...

    def zero_at(self, offset: int, length: int) -> None:
        """Make [offset, offset + length) read as zeros, without allocating it where possible."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Read back what the target holds (--verify)."""

    def finish(self) -> None:
        """Make everything written durable and close; the target is complete after this."""

    def abort(self) -> None:
        """Release resources after a failure; the caller discards the result."""


class RawFileTarget:
    """A new sparse raw image: truncated to size, data written with pwrite."""

    # One: ext4 takes the file's lock for each buffered write, so more writers only spin on it.
    concurrent_writes = 1

    def __init__(self, path: Path, size: int) -> None:
        # 0600: a restored disk holds the guest's data, for the appliance's user alone.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view[:FILE_WRITE_PIECE], offset)
            view = view[written:]
            offset += written

    def zero_at(self, offset: int, length: int) -> None:
        """Nothing to do: the file was created as one hole."""

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def finish(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


class QemuNbdTarget:
    """An image QEMU opens (qcow2 file, block device), written through a private qemu-nbd.

    `fresh` says the image was just created and reads as zeros; otherwise zero
    ranges are written as NBD write-zeroes, which QEMU turns into
    BLKZEROOUT/discard/zero clusters.

    Writes go over `connections` connections, one write at a time each: libnbd runs one
    synchronous call per handle at a time, and QEMU works on the requests of several
    connections at once, so the restore's writers and qemu-nbd overlap instead of taking
    turns, one request at a time.

    qemu-nbd writes with O_DIRECT (--cache=none): the data goes to the disk once, without
    being copied into the page cache first, which took half of qemu-nbd's CPU time. Where
    QEMU cannot open the image so (a file system without O_DIRECT), it gets the page cache.
    """

    def __init__(self, path: Path | str, fmt: str, fresh: bool, connections: int = WRITERS) -> None:
        try:
            self._server = QemuNbdServer(path, fmt, clients=connections, cache="none")
        except TargetWriteError:
            self._server = QemuNbdServer(path, fmt, clients=connections, cache="writeback")
        self._idle: queue.SimpleQueue[NbdTarget] = queue.SimpleQueue()
        self._all: list[NbdTarget] = []
        try:
            for _ in range(connections):
                self._all.append(NbdTarget.connect_unix(self._server.socket, fresh=fresh))
        except BaseException:
            self.abort()
            raise
        for connection in self._all:
            self._idle.put(connection)
        self.concurrent_writes = connections

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        with self._connection() as connection:
            connection.write_at(offset, data)

    def zero_at(self, offset: int, length: int) -> None:
        with self._connection() as connection:
            connection.zero_at(offset, length)

    def read_at(self, offset: int, length: int) -> bytes:
        with self._connection() as connection:
            return connection.read_at(offset, length)

    def finish(self) -> None:
        # Each connection flushes what was written through it; qemu-nbd exits once all are closed.
        for connection in self._all:
            connection.finish()
        self._server.wait()

    def abort(self) -> None:
        for connection in self._all:
            connection.abort()
        self._server.kill()

    @contextmanager
    def _connection(self) -> Iterator[NbdTarget]:
        connection = self._idle.get()
        try:
            yield connection
        finally:
            self._idle.put(connection)


def create_qcow2(path: Path, size: int, backing_uri: str | None = None) -> None:
    """A new empty qcow2 image, or an overlay on a raw backing image named by URI (an NBD
    export). qcow2 sizes are whole 512-byte sectors: a disk of another size gets a
    zero-filled tail."""
    backing = ["-b", backing_uri, "-F", "raw"] if backing_uri is not None else []
    create = ["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(path), str(size)]
    result = subprocess.run(create, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise TargetWriteError(f"qemu-img could not create {path}: {result.stderr.strip()}")
    os.chmod(path, 0o600)   # the guest's data: for the appliance's user alone
