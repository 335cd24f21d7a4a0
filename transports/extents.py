"""Byte ranges of a disk, and the pieces a backup reads them in."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def intersect(a: list[Extent], b: list[Extent]) -> list[Extent]:
    """The ranges in both merged lists."""
    out: list[Extent] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i].offset, b[j].offset), min(a[i].end, b[j].end)
        if lo < hi:
            out.append(Extent(lo, hi - lo))
        if a[i].end < b[j].end:
            i += 1
        else:
            j += 1
    return out


@dataclass(frozen=True)
class Piece:
    """One read of a backup: a range, and the ranges inside it that may hold data (disk offsets).

    A piece without data is all zeros and is not read. A piece never crosses a block boundary,
    so the store can make a block of a piece that fills its block-sized slot."""

    offset: int
    length: int
    data: tuple[Extent, ...]

    @property
    def end(self) -> int:
        return self.offset + self.length


def pieces(block_size: int, data: list[Extent], wanted: list[Extent]) -> Iterator[Piece]:
    """The `wanted` ranges (merged) as pieces in disk order: cut at block boundaries where they
    hold data (per `data`, merged), whole runs of zeros where they do not."""
    j = 0
    for w in wanted:
        position = w.offset
        while position < w.end:
            while j < len(data) and data[j].end <= position:
                j += 1
            if j == len(data) or data[j].offset >= w.end:
                yield Piece(position, w.end - position, ())
                break
            slot = max(position, data[j].offset - data[j].offset % block_size)
            if slot > position:
                yield Piece(position, slot - position, ())
                position = slot
            end = min(w.end, position - position % block_size + block_size)
            inside = []
            k = j
            while k < len(data) and data[k].offset < end:
                lo, hi = max(data[k].offset, position), min(data[k].end, end)
                inside.append(Extent(lo, hi - lo))
                k += 1
            yield Piece(position, end - position, tuple(inside))
            position = end
