"""A disk's extent map: which block holds each byte, as a small tree of content-addressed pages.

The map of one disk in one backup is a sorted list of extents

    (disk offset, length) -> (block id, offset inside the block)

and every byte not in an extent reads as zero (a hole). A full read makes one extent per
block-sized slot that holds data; an incremental splices the extents of what changed into its
parent's map, so a block written once can be referenced by many backups, at its full length
or in pieces.

The list is cut into leaf pages by disk offset, each covering LEAF_SPAN bytes; interior pages
name up to FANOUT children each; the root covers the disk. Pages are blocks like any other
(kind PAGE in packs.py, compressed and sealed the same way), named by their content's id, so
a backup writes only the leaves its changes touch and the interior pages above them: every
other page is the parent's, by id. A page that would hold nothing is not written: its parent
records no child at that slot, or the manifest no root.

Page layout, integers little-endian:

    0    4   magic b"CMAP"
    4    1   version = 1
    5    1   level: 0 for a leaf, n for a page whose children are at level n-1
    6    2   0
    8    8   start: the disk offset of the first byte this page covers
    16   8   span: the bytes it covers (LEAF_SPAN * FANOUT**level)
    24   4   n: leaf: distinct block ids; interior: children
    28   4   m: leaf: extents; interior: 0
    32       leaf:     n block ids (32 bytes each), then m extents of
                       u32 disk offset - start | u32 length | u32 number of its block id
                       in the page's list | u32 offset inside the block
                       sorted by offset, not overlapping, none empty
             interior: n children of u32 slot (0..FANOUT-1, ascending) | 32-byte page id;
                       child `slot` covers [start + slot * span / FANOUT, ... + span / FANOUT)

start and level are part of a page so a page is valid at one place only. A page's extents
never reach past its span nor past the disk's size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from .errors import MapCorruptError

LEAF_SPAN = 64 << 20
FANOUT = 256
MAGIC = b"CMAP"
VERSION = 1
_HEADER = struct.Struct("<4sBBHQQII")
_EXTENT = struct.Struct("<IIII")
_CHILD = struct.Struct("<I32s")
_ID = 32
# Decoded pages kept by a reader: leaves of random reads (nbdkit), interior pages of any walk.
_CACHED_PAGES = 512


class MapEntry(NamedTuple):
    offset: int  # on the disk
    length: int
    block_id: bytes
    block_offset: int  # where in the block these bytes start

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class MapShape:
    """The geometry of a disk's tree: leaf span, fan-out and the interior levels above the leaves."""

    leaf_span: int
    fanout: int
    depth: int  # 0: the root is a leaf

    @classmethod
    def for_size(cls, size: int, leaf_span: int = LEAF_SPAN, fanout: int = FANOUT) -> MapShape:
        depth = 0
        while leaf_span * fanout**depth < size:
            depth += 1
        return cls(leaf_span, fanout, depth)

    def span(self, level: int) -> int:
        return self.leaf_span * self.fanout**level

    def leaf_count(self, size: int) -> int:
        return -(-size // self.leaf_span)


# --- pages -------------------------------------------------------------------------------


def encode_leaf(start: int, span: int, entries: list[MapEntry]) -> bytes:
    numbers: dict[bytes, int] = {}
    extents = []
    for e in entries:
        number = numbers.setdefault(e.block_id, len(numbers))
        extents.append(_EXTENT.pack(e.offset - start, e.length, number, e.block_offset))
    header = _HEADER.pack(MAGIC, VERSION, 0, 0, start, span, len(numbers), len(extents))
    return b"".join([header, *numbers, *extents])


def encode_interior(level: int, start: int, span: int, children: list[tuple[int, bytes]]) -> bytes:
    header = _HEADER.pack(MAGIC, VERSION, level, 0, start, span, len(children), 0)
    return b"".join([header, *(_CHILD.pack(slot, page_id) for slot, page_id in children)])


@dataclass(frozen=True)
class Leaf:
    start: int
    entries: tuple[MapEntry, ...]
    block_ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Interior:
    level: int
    start: int
    children: tuple[tuple[int, bytes], ...]  # (slot, page id)


def decode_page(data: bytes, page_id: bytes, level: int, start: int, shape: MapShape) -> Leaf | Interior:
    """Parse a page found at (level, start) of a tree of `shape`; MapCorruptError if it does not belong there."""
    where = f"map page {page_id.hex()}"
    if len(data) < _HEADER.size:
        raise MapCorruptError(f"{where} is truncated")
    magic, version, got_level, zero, got_start, span, n, m = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or zero:
        raise MapCorruptError(f"{where} is not a version {VERSION} map page")
    if (got_level, got_start, span) != (level, start, shape.span(level)):
        raise MapCorruptError(f"{where} covers level {got_level} at {got_start} (+{span}), "
                              f"expected level {level} at {start} (+{shape.span(level)})")
    body = memoryview(data)[_HEADER.size:]
    if level == 0:
        if len(body) != n * _ID + m * _EXTENT.size:
            raise MapCorruptError(f"{where} has {len(body)} bytes for {n} ids and {m} extents")
        ids = tuple(bytes(body[i * _ID:(i + 1) * _ID]) for i in range(n))
        entries = []
        end = 0
        for offset, length, number, block_offset in _EXTENT.iter_unpack(body[n * _ID:]):
            if offset < end or length == 0 or offset + length > span or number >= n:
                raise MapCorruptError(f"{where}: extent at {offset} (+{length}) is out of order or out of range")
            end = offset + length
            entries.append(MapEntry(start + offset, length, ids[number], block_offset))
        return Leaf(start, tuple(entries), ids)
    if m or len(body) != n * _CHILD.size:
        raise MapCorruptError(f"{where} has {len(body)} bytes for {n} children")
    children = tuple(_CHILD.iter_unpack(body))
    slots = [slot for slot, _ in children]
    if slots != sorted(set(slots)) or (slots and slots[-1] >= shape.fanout):
        raise MapCorruptError(f"{where}: child slots are out of order or out of range")
    return Interior(level, start, children)


# --- reading a tree ----------------------------------------------------------------------


class MapReader:
    """Reads one disk's tree; load_page(id) returns a page's verified plaintext."""

    def __init__(self, load_page: Callable[[bytes], bytes], root: bytes | None, shape: MapShape, size: int) -> None:
        self.root = root
        self.shape = shape
        self.size = size
        self._load_page = load_page
        self._page = lru_cache(maxsize=_CACHED_PAGES)(self._decode)

    def _decode(self, page_id: bytes, level: int, start: int) -> Leaf | Interior:
        return decode_page(self._load_page(page_id), page_id, level, start, self.shape)

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[MapEntry]:
        """The extents that hold data in [start, end), in disk order, clipped to it."""
        end = self.size if end is None else min(end, self.size)
        if self.root is None or start >= end:
            return
        yield from self._entries(self.root, self.shape.depth, 0, start, end)

    def _entries(self, page_id: bytes, level: int, page_start: int, start: int, end: int) -> Iterator[MapEntry]:
        page = self._page(page_id, level, page_start)
        if isinstance(page, Leaf):
            for e in page.entries:
                if e.end <= start:
                    continue
                if e.offset >= end:
                    break
                if e.offset >= start and e.end <= end:
                    yield e
                else:
                    lo, hi = max(e.offset, start), min(e.end, end)
                    yield MapEntry(lo, hi - lo, e.block_id, e.block_offset + lo - e.offset)
            return
        child_span = self.shape.span(level - 1)
        for slot, child in page.children:
            child_start = page_start + slot * child_span
            if child_start + child_span <= start:
                continue
            if child_start >= end:
                break
            yield from self._entries(child, level - 1, child_start, start, end)

    def pages(self, skip: set[bytes] | frozenset[bytes] = frozenset()) -> Iterator[tuple[bytes, int, int]]:
        """(page id, level, start) of every page, parents before their children; a page whose
        id is in `skip` (when its turn comes) is left out with everything below it."""
        if self.root is not None:
            yield from self._pages(self.root, self.shape.depth, 0, skip)

    def _pages(self, page_id: bytes, level: int, start: int, skip: set[bytes] | frozenset[bytes]
               ) -> Iterator[tuple[bytes, int, int]]:
        if page_id in skip:
            return
        yield page_id, level, start
        if level == 0:
            return
        page = self._page(page_id, level, start)
        assert isinstance(page, Interior)
        child_span = self.shape.span(level - 1)
        for slot, child in page.children:
            yield from self._pages(child, level - 1, start + slot * child_span, skip)

    def leaves(self) -> Iterator[tuple[int, bytes]]:
        """(leaf number, page id) of every leaf page, reading only interior pages."""
        for page_id, level, start in self.pages():
            if level == 0:
                yield start // self.shape.leaf_span, page_id

    def leaf(self, number: int, page_id: bytes) -> Leaf:
        page = self._page(page_id, 0, number * self.shape.leaf_span)
        assert isinstance(page, Leaf)
        return page


# --- writing a tree ----------------------------------------------------------------------


def splice(old: Iterable[MapEntry], changes: list[MapEntry | tuple[int, int]], end: int) -> list[MapEntry]:
    """`old` overlaid by `changes`, cut at `end`: a change is a MapEntry (new data) or an
    (offset, length) hole; both lists sorted, changes not overlapping each other."""
    cuts = [(c[0], c[0] + c[1]) for c in changes]
    result: list[MapEntry] = [c for c in changes if isinstance(c, MapEntry)]
    i = 0
    for e in old:
        while i < len(cuts) and cuts[i][1] <= e.offset:
            i += 1
        position = e.offset
        j = i
        while position < e.end and j < len(cuts) and cuts[j][0] < e.end:
            lo, hi = cuts[j]
            if lo > position:
                result.append(MapEntry(position, lo - position, e.block_id, e.block_offset + position - e.offset))
            position = max(position, hi)
            j += 1
        if position < e.end:
            result.append(MapEntry(position, e.end - position, e.block_id, e.block_offset + position - e.offset))
    result.sort()
    return join_adjacent(clip(result, end))


def clip(entries: list[MapEntry], end: int) -> list[MapEntry]:
    out = []
    for e in entries:
        if e.offset >= end:
            break
        out.append(e if e.end <= end else MapEntry(e.offset, end - e.offset, e.block_id, e.block_offset))
    return out


def join_adjacent(entries: list[MapEntry]) -> list[MapEntry]:
    """Merge extents that continue each other on the disk and in the same block."""
    out: list[MapEntry] = []
    for e in entries:
        if out:
            last = out[-1]
            if (last.end == e.offset and last.block_id == e.block_id
                    and last.block_offset + last.length == e.block_offset):
                out[-1] = MapEntry(last.offset, last.length + e.length, last.block_id, last.block_offset)
                continue
        out.append(e)
    return out


def build_tree(leaves: dict[int, bytes], shape: MapShape, store_page: Callable[[bytes], bytes]) -> bytes | None:
    """The root id of a tree over `leaves` (leaf number -> page id); store_page(page) stores a
    page (unless the store has it) and returns its id."""
    level_pages = leaves
    for level in range(1, shape.depth + 1):
        grouped: dict[int, list[tuple[int, bytes]]] = {}
        for number, page_id in sorted(level_pages.items()):
            grouped.setdefault(number // shape.fanout, []).append((number % shape.fanout, page_id))
        span = shape.span(level)
        level_pages = {parent: store_page(encode_interior(level, parent * span, span, children))
                       for parent, children in grouped.items()}
    return level_pages.get(0)
