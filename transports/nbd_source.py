"""Read one disk's point-in-time NBD export with libnbd.

Block status answers two questions without reading data: which ranges hold data
(`base:allocation`) and which changed since a checkpoint (`qemu:dirty-bitmap:NAME`).
Reads are issued with `aio_pread`, several in flight, because one NBD connection with a deep
queue reaches the export's ceiling while a synchronous loop does not.

libnbd 1.14's Python binding never frees an `nbd.Buffer` (nor a buffer given to it), even
after its handle is gone, so reads land in buffers of one process-wide pool that every source
reuses: the pool only grows to the most reads ever in flight at once. Buffers come in size
classes (powers of two up to 64 KiB, multiples of 64 KiB above); a read of n bytes takes a
buffer of its class, reads the class's length from where the buffer stays inside the disk, and
the n bytes are copied out into the piece.

A stopped VM's raw image is read directly instead (DiskPoint.raw_file), with pread, while the
export still answers block status and holds QEMU's lock on the image, so nothing writes to it:
qemu-nbd adds no format layer to a raw file, only its read, its send and our receive, which
took a fifth of the CPU time of ingesting the peers bench's image. A whole piece is read
into a new bytes object: no zero-fill, no copy out of a libnbd buffer.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

import nbd

from .extents import Extent, Piece
from .points import DiskPoint

ALLOCATION = "base:allocation"
DIRTY_PREFIX = "qemu:dirty-bitmap:"
STATUS_SPAN = 1 << 30
# Reads are issued in requests of at most this size, whatever the piece: QEMU's NBD server and
# qemu-nbd answered 256 KiB requests about twice as fast as 1-4 MiB ones here (as nbdcopy's
# default request size suggests), with 16-32 in flight.
REQUEST = 256 << 10
_SMALL_CLASS = 64 << 10


def size_class(n: int) -> int:
    """The buffer length a read of n bytes uses: at most 2x n below 64 KiB, 64 KiB more above."""
    if n > _SMALL_CLASS:
        return -(-n // _SMALL_CLASS) * _SMALL_CLASS
    return max(4096, 1 << (n - 1).bit_length())


class _BufferPool:
    def __init__(self) -> None:
        self._free: dict[int, list[nbd.Buffer]] = {}
        self._lock = threading.Lock()

    def take(self, length: int) -> nbd.Buffer:
        with self._lock:
            free = self._free.get(length)
            if free:
                return free.pop()
        return nbd.Buffer(length)

    def give(self, buffer: nbd.Buffer) -> None:
        with self._lock:
            self._free.setdefault(len(buffer), []).append(buffer)


_BUFFERS = _BufferPool()

# Takes a piece and its bytes (None: all zeros, nothing read); owns the buffer from then on.
Deliver = Callable[[Piece, bytes | bytearray | None], None]


class SourceError(Exception):
    """The export cannot be read as asked (missing bitmap context, read failure)."""


@dataclass
class _PendingPiece:
    piece: Piece
    buffer: bytearray | None  # None: a piece of zeros, nothing read
    outstanding: int = 0


@dataclass
class _Read:
    cookie: int
    buffer: nbd.Buffer
    pending: _PendingPiece
    skip: int      # bytes of the buffer before the wanted ones
    at: int        # where they go in the piece
    length: int


class NbdSource:
    def __init__(self, uri: str, bitmap: str | None = None, in_flight: int = 16, raw_file: str | None = None):
        """raw_file: read the data from this raw image rather than from the export (see above)."""
        self.uri = uri
        self.bitmap = bitmap
        self.in_flight = in_flight
        self.raw_file = raw_file
        self.bytes_read = 0
        self._fd: int | None = None
        self._h = nbd.NBD()
        self._h.add_meta_context(ALLOCATION)
        if bitmap:
            self._h.add_meta_context(DIRTY_PREFIX + bitmap)
        try:
            self._h.connect_uri(uri)
        except nbd.Error as e:
            raise SourceError(f"cannot connect to {uri}: {e}") from e
        if bitmap and not self._h.can_meta_context(DIRTY_PREFIX + bitmap):
            self.close()
            raise SourceError(f"export {uri} does not publish dirty bitmap {bitmap!r}")
        self.size = self._h.get_size()
        if raw_file is not None:
            try:
                self._fd = os.open(raw_file, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                self.close()
                raise SourceError(f"cannot open raw image {raw_file}: {e}") from e
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    @classmethod
    def of(cls, point: DiskPoint) -> NbdSource:
        """The source of an export's disk point: its base bitmap, its raw file if it has one."""
        return cls(point.uri, point.since, raw_file=point.raw_file)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            self._h.shutdown()
        except nbd.Error:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def data_extents(self) -> list[Extent]:
        """Ranges that may hold non-zero data (everything not reported as zero)."""
        return [Extent(o, n) for o, n, flags in self._status(ALLOCATION) if not flags & nbd.STATE_ZERO]

    def dirty_extents(self) -> list[Extent]:
        if not self.bitmap:
            raise SourceError("no bitmap was requested for this source")
        return [Extent(o, n) for o, n, flags in self._status(DIRTY_PREFIX + self.bitmap) if flags & 1]

    def _status(self, context: str) -> list[tuple[int, int, int]]:
        runs: list[tuple[int, int, int]] = []
        offset = 0

        def collect(metacontext: str, start: int, entries: list[int], err: object) -> int:
            nonlocal offset
            if metacontext != context:
                return 0
            pos = start
            for i in range(0, len(entries), 2):
                length = min(entries[i], self.size - pos)
                if length > 0:
                    runs.append((pos, length, entries[i + 1]))
                pos += entries[i]
            offset = pos
            return 0

        while offset < self.size:
            before = offset
            self._h.block_status(min(self.size - offset, STATUS_SPAN), offset, collect)
            if offset <= before:
                raise SourceError(f"{self.uri}: server returned no {context} status at offset {before}")
        return runs

    def read_pieces(self, pieces: Iterable[Piece], deliver: Deliver) -> None:
        """Read each piece's data ranges and hand the pieces, in order, to `deliver`: a buffer of the
        piece's bytes (zeros between its data ranges, as the disk reads there), None for a piece
        of zeros."""
        if self._fd is not None:
            self._read_file(self._fd, pieces, deliver)
            return
        reads: dict[int, _Read] = {}   # by cookie
        order: deque[_PendingPiece] = deque()
        try:
            for piece in pieces:
                pending = _PendingPiece(piece, bytearray(piece.length) if piece.data else None)
                for extent in piece.data:
                    for offset in range(extent.offset, extent.end, REQUEST):
                        while len(reads) >= self.in_flight:
                            self._retire(reads)
                            self._deliver_finished(order, deliver)
                        read = self._issue(Extent(offset, min(REQUEST, extent.end - offset)), pending)
                        reads[read.cookie] = read
                order.append(pending)   # only now: until all its reads are issued it is not complete
                self._deliver_finished(order, deliver)
            while reads:
                self._retire(reads)
                self._deliver_finished(order, deliver)
            self._deliver_finished(order, deliver)
        finally:
            if reads:   # a failure: wait until libnbd is done with the buffers before they are reused
                self._drain(list(reads.values()))

    def _read_file(self, fd: int, pieces: Iterable[Piece], deliver: Deliver) -> None:
        for piece in pieces:
            if not piece.data:
                deliver(piece, None)
                continue
            if piece.data == (Extent(piece.offset, piece.length),):
                whole = os.pread(fd, piece.length, piece.offset)
                if len(whole) == piece.length:
                    self.bytes_read += piece.length
                    deliver(piece, whole)
                    continue
            buffer = bytearray(piece.length)
            view = memoryview(buffer)
            for extent in piece.data:
                self._read_into(fd, view[extent.offset - piece.offset:extent.end - piece.offset], extent.offset)
                self.bytes_read += extent.length
            deliver(piece, buffer)

    def _read_into(self, fd: int, view: memoryview, offset: int) -> None:
        while view:
            try:
                n = os.preadv(fd, [view], offset)
            except OSError as e:
                raise SourceError(f"reading {self.raw_file} at offset {offset} failed: {e}") from e
            if n == 0:
                raise SourceError(f"{self.raw_file} ends at offset {offset}, inside the disk's {self.size} bytes")
            view, offset = view[n:], offset + n

    def _issue(self, extent: Extent, pending: _PendingPiece) -> _Read:
        length = size_class(extent.length)
        if length > self.size:
            length = extent.length   # a disk smaller than the class
        buffer = _BUFFERS.take(length)
        start = min(extent.offset, self.size - length)
        cookie = self._h.aio_pread(buffer, start)
        pending.outstanding += 1
        self.bytes_read += extent.length
        return _Read(cookie, buffer, pending, extent.offset - start, extent.offset - pending.piece.offset,
                     extent.length)

    def _retire(self, reads: dict[int, _Read]) -> None:
        """Wait for the socket, copy every completed read into its piece and forget it.

        libnbd names the completed commands itself: asking each read in flight after every
        poll cost a Python call per read per poll (175,000 for a 1.3 GiB disk)."""
        self._h.poll(-1)
        while reads and (cookie := self._h.aio_peek_command_completed()) > 0:
            r = reads.pop(cookie)
            try:
                self._h.aio_command_completed(cookie)
            except nbd.Error as e:
                raise SourceError(f"read from {self.uri} failed at offset {r.pending.piece.offset + r.at}: {e}") from e
            assert r.pending.buffer is not None
            r.pending.buffer[r.at:r.at + r.length] = memoryview(r.buffer.to_buffer())[r.skip:r.skip + r.length]
            r.pending.outstanding -= 1
            _BUFFERS.give(r.buffer)

    def _drain(self, reads: list[_Read]) -> None:
        for r in reads:
            try:
                while not self._h.aio_command_completed(r.cookie):
                    self._h.poll(-1)
            except nbd.Error:
                continue   # failed: libnbd has let go of its buffer all the same
            _BUFFERS.give(r.buffer)

    @staticmethod
    def _deliver_finished(order: deque[_PendingPiece], deliver: Deliver) -> None:
        while order and order[0].outstanding == 0:
            pending = order.popleft()
            deliver(pending.piece, pending.buffer)
