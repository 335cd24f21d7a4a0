"""Read one disk's point-in-time NBD export with libnbd.

Block status answers two questions without reading data: which ranges hold data
(`base:allocation`) and which changed since a checkpoint (`qemu:dirty-bitmap:NAME`).
Reads are issued with `aio_pread` straight into the chunk's buffer, several in
flight, because one NBD connection with a deep queue reaches the export's ceiling
while a synchronous loop does not.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import nbd

from .extents import ChunkPlan, Extent

ALLOCATION = "base:allocation"
DIRTY_PREFIX = "qemu:dirty-bitmap:"
# QEMU's NBD server refuses requests above 32 MiB; 4 MiB keeps the queue deep.
READ_PIECE = 4 << 20
STATUS_SPAN = 1 << 30


class SourceError(Exception):
    """The export cannot be read as asked (missing bitmap context, read failure)."""


@dataclass
class _PendingChunk:
    index: int
    buffer: bytearray
    outstanding: int = 0


@dataclass
class _Read:
    cookie: int
    piece: nbd.Buffer
    chunk: _PendingChunk
    at: int        # offset inside the chunk
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

    def read_chunks(self, plan: ChunkPlan, chunks: list[int],
                    deliver: Callable[[int, bytearray], None]) -> None:
        """Read the data ranges of `chunks` and hand each finished chunk, in order, to `deliver`.

        Ranges between data extents stay zero in the buffer, which is what the disk reads there.
        Reads land in a small pool of libnbd-owned buffers and are copied into the chunk:
        libnbd 1.14's Python binding never releases a buffer it was given with
        Buffer.from_buffer, so reading straight into chunk memory would leak every chunk.
        """
        pool = [nbd.Buffer(READ_PIECE) for _ in range(self.in_flight)]
        reads: list[_Read] = []
        order: deque[_PendingChunk] = deque()
        for index in chunks:
            chunk = _PendingChunk(index, bytearray(plan.chunk_length(index)))
            base = index * plan.chunk_size
            for extent in plan.data.get(index, []):
                for off in range(extent.offset, extent.end, READ_PIECE):
                    n = min(READ_PIECE, extent.end - off)
                    while not pool:
                        reads = self._retire(reads, pool)
                        self._deliver_finished(order, deliver)
                    piece = pool.pop() if n == READ_PIECE else nbd.Buffer(n)
                    reads.append(_Read(self._h.aio_pread(piece, off), piece, chunk, off - base, n))
                    chunk.outstanding += 1
                    self.bytes_read += n
            order.append(chunk)   # only now: until all its reads are issued it is not complete
            self._deliver_finished(order, deliver)
        while reads:
            reads = self._retire(reads, pool)
            self._deliver_finished(order, deliver)
        self._deliver_finished(order, deliver)

    def _retire(self, reads: list[_Read], pool: list[nbd.Buffer]) -> list[_Read]:
        """Wait for the socket, copy every completed read into its chunk; return those still in flight."""
        self._h.poll(-1)
        waiting = []
        for r in reads:
            try:
                done = self._h.aio_command_completed(r.cookie)
            except nbd.Error as e:
                raise SourceError(f"read from {self.uri} failed in chunk {r.chunk.index}: {e}") from e
            if not done:
                waiting.append(r)
                continue
            r.chunk.buffer[r.at:r.at + r.length] = memoryview(r.piece.to_buffer())[:r.length]
            r.chunk.outstanding -= 1
            if r.length == READ_PIECE:
                pool.append(r.piece)
        return waiting

    @staticmethod
    def _deliver_finished(order: deque[_PendingChunk], deliver: Callable[[int, bytearray], None]) -> None:
        while order and order[0].outstanding == 0:
            chunk = order.popleft()
            deliver(chunk.index, chunk.buffer)
