"""Copy one disk from a source into the store, reading only what the backup needs.

A full read wants the whole disk; an incremental wants what the bitmap marks dirty, plus
whatever the store asks for again (must_read: ranges whose blocks the parent lost, or that
lie beyond the parent's disk). The wanted ranges are read in pieces that never cross a
block boundary (extents.pieces), so the store makes the same block of a whole slot whatever
read it, and gathers the small pieces of scattered writes; ranges that hold no data per
`base:allocation` are declared zero without reading them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .extents import Extent, Piece, intersect, merge, pieces
from .nbd_source import NbdSource


class BlockSink(Protocol):
    """The store's per-disk writer (dedup.DiskWriter), as ingest needs it."""

    block_size: int

    def put(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...
    def zero(self, offset: int, length: int) -> None: ...
    def must_read(self) -> list[tuple[int, int]]: ...


@dataclass
class IngestStats:
    bytes_wanted: int = 0     # the disk bytes the backup gives: changed ones, or all of them
    bytes_read: int = 0
    bytes_zero: int = 0       # wanted, but holes per the source's allocation: not read
    pieces_read: int = 0


def ingest_disk(source: NbdSource, sink: BlockSink, incremental: bool,
                progress: Callable[[int, int], None] | None = None) -> IngestStats:
    """`progress(done, total)` counts bytes read. Full: every byte. Incremental: what the bitmap marks
    dirty and what the sink must have again; every other byte keeps the parent's extent."""
    wanted = (merge([*source.dirty_extents(), *(Extent(o, n) for o, n in sink.must_read())]) if incremental
              else [Extent(0, source.size)])
    data = merge(source.data_extents())
    total = sum(e.length for e in intersect(data, wanted))
    stats = IngestStats(bytes_wanted=sum(e.length for e in wanted))
    if progress:
        progress(0, total)

    def deliver(piece: Piece, buffer: bytes | bytearray | None) -> None:
        if buffer is None:
            sink.zero(piece.offset, piece.length)
            stats.bytes_zero += piece.length
            return
        sink.put(piece.offset, buffer)
        stats.pieces_read += 1
        if progress:
            progress(source.bytes_read, total)

    source.read_pieces(pieces(sink.block_size, data, wanted), deliver)
    stats.bytes_read = source.bytes_read
    return stats
