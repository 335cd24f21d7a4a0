"""Copy one disk from a source into the store, reading only what the plan needs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .extents import ChunkPlan
from .nbd_source import NbdSource


class ChunkSink(Protocol):
    """The store's per-disk writer, as ingest needs it."""

    def put(self, chunk_no: int, data: bytes | bytearray | memoryview) -> None: ...
    def zero(self, chunk_no: int) -> None: ...
    def reuse(self, chunk_no: int) -> bool: ...


@dataclass
class IngestStats:
    chunks: int = 0
    chunks_read: int = 0
    chunks_zero: int = 0
    chunks_reused: int = 0
    chunks_reread: int = 0   # unchanged, but the parent's chunk was gone: read again
    bytes_read: int = 0


def ingest_disk(source: NbdSource, sink: ChunkSink, chunk_size: int, incremental: bool,
                progress: Callable[[int, int], None] | None = None) -> IngestStats:
    """`progress(done, total)` counts bytes read. Full: every chunk with data is read. Incremental: only chunks the bitmap marks dirty;
    the others keep the parent's ids (or are read after all if the store lost them)."""
    dirty = source.dirty_extents() if incremental else None
    plan = ChunkPlan.build(source.size, chunk_size, source.data_extents(), dirty)
    stats = IngestStats(chunks=plan.chunk_count)
    to_read: list[int] = []
    for i in range(plan.chunk_count):
        if not plan.must_read(i):
            if sink.reuse(i):
                stats.chunks_reused += 1
                continue
            stats.chunks_reread += 1
        if i in plan.data:
            to_read.append(i)
        else:
            sink.zero(i)
            stats.chunks_zero += 1

    total = plan.bytes_to_read()
    if progress:
        progress(0, total)

    def deliver(index: int, data: bytearray) -> None:
        sink.put(index, data)
        if progress:
            progress(source.bytes_read, total)

    source.read_chunks(plan, to_read, deliver)
    stats.chunks_read = len(to_read)
    stats.bytes_read = source.bytes_read
    return stats
