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
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

import nbd

from .extents import Extent, Piece

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
    def __init__(self, uri: str, bitmap: str | None = None, in_flight: int = 16):
        self.uri = uri
        self.bitmap = bitmap
        self.in_flight = in_flight
        self.bytes_read = 0
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

    def close(self) -> None:
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

    def read_pieces(self, pieces: Iterable[Piece], deliver: Callable[[Piece, bytearray | None], None]) -> None:
        """Read each piece's data ranges and hand the pieces, in order, to `deliver`: a buffer of the
        piece's bytes (zeros between its data ranges, as the disk reads there), None for a piece
        of zeros."""
        reads: list[_Read] = []
        order: deque[_PendingPiece] = deque()
        try:
            for piece in pieces:
                pending = _PendingPiece(piece, bytearray(piece.length) if piece.data else None)
                for extent in piece.data:
                    for offset in range(extent.offset, extent.end, REQUEST):
                        while len(reads) >= self.in_flight:
                            reads = self._retire(reads)
                            self._deliver_finished(order, deliver)
                        reads.append(self._issue(Extent(offset, min(REQUEST, extent.end - offset)), pending))
                order.append(pending)   # only now: until all its reads are issued it is not complete
                self._deliver_finished(order, deliver)
            while reads:
                reads = self._retire(reads)
                self._deliver_finished(order, deliver)
            self._deliver_finished(order, deliver)
        finally:
            if reads:   # a failure: wait until libnbd is done with the buffers before they are reused
                self._drain(reads)

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

    def _retire(self, reads: list[_Read]) -> list[_Read]:
        """Wait for the socket, copy every completed read into its piece; return those still in flight."""
        self._h.poll(-1)
        waiting = []
        for r in reads:
            try:
                done = self._h.aio_command_completed(r.cookie)
            except nbd.Error as e:
                raise SourceError(f"read from {self.uri} failed at offset {r.pending.piece.offset + r.at}: {e}") from e
            if not done:
                waiting.append(r)
                continue
            assert r.pending.buffer is not None
            r.pending.buffer[r.at:r.at + r.length] = memoryview(r.buffer.to_buffer())[r.skip:r.skip + r.length]
            r.pending.outstanding -= 1
            _BUFFERS.give(r.buffer)
        return waiting

    def _drain(self, reads: list[_Read]) -> None:
        for r in reads:
            try:
                while not self._h.aio_command_completed(r.cookie):
                    self._h.poll(-1)
            except nbd.Error:
                continue   # failed: libnbd has let go of its buffer all the same
            _BUFFERS.give(r.buffer)

    @staticmethod
    def _deliver_finished(order: deque[_PendingPiece], deliver: Callable[[Piece, bytearray | None], None]) -> None:
        while order and order[0].outstanding == 0:
            pending = order.popleft()
            deliver(pending.piece, pending.buffer)
