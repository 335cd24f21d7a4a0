"""Byte ranges of a disk and how they fall onto fixed-size chunks."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Extent:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def merge(extents: Iterable[Extent]) -> list[Extent]:
    """Sorted, with touching or overlapping ranges joined."""
    out: list[Extent] = []
    for e in sorted(extents):
        if e.length <= 0:
            continue
        if out and e.offset <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.offset, max(last.end, e.end) - last.offset)
        else:
            out.append(e)
    return out


@dataclass
class ChunkPlan:
    """What to do with each chunk of a disk: which byte ranges hold data.

    `data[i]` lists the data ranges inside chunk i in disk offsets; a chunk absent
    from `data` holds only zeros or holes. `changed` is None for a full read, or the
    set of chunks touched by a dirty range (all others keep their previous ids).
    """

    size: int
    chunk_size: int
    data: dict[int, list[Extent]]
    changed: set[int] | None

    @classmethod
    def build(cls, size: int, chunk_size: int, data: Iterable[Extent],
              dirty: Iterable[Extent] | None = None) -> ChunkPlan:
        per_chunk: dict[int, list[Extent]] = {}
        for e in merge(data):
            for i, piece in split_by_chunk(e, chunk_size):
                per_chunk.setdefault(i, []).append(piece)
        changed = None
        if dirty is not None:
            changed = {i for e in merge(dirty) for i, _ in split_by_chunk(e, chunk_size)}
        return cls(size, chunk_size, per_chunk, changed)

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_size)

    def chunk_length(self, i: int) -> int:
        return min(self.chunk_size, self.size - i * self.chunk_size)

    def must_read(self, i: int) -> bool:
        return self.changed is None or i in self.changed

    def bytes_to_read(self) -> int:
        return sum(e.length for i, pieces in self.data.items() if self.must_read(i) for e in pieces)


def split_by_chunk(e: Extent, chunk_size: int) -> Iterable[tuple[int, Extent]]:
    off = e.offset
    while off < e.end:
        i = off // chunk_size
        stop = min(e.end, (i + 1) * chunk_size)
        yield i, Extent(off, stop - off)
        off = stop
