"""Packs: the objects of a format-2 store, each holding many blocks, written once, never changed.

    packs/<hh>/<32 hex>      hh = the name's first two hex digits; the name is 16 random bytes

A pack is written under a temporary name, made durable and renamed (backend.py), so it is
whole or absent. It describes itself twice, so the block index (blockindex.py) can always be
rebuilt from the packs alone:

    offset        size  field
    0             8     magic b"CAIRNPAK"
    8             4     version (u32) = 1
    12            4     reserved, 0
    16            ...   records, back to back: a 48-byte record header, then its stored bytes
    T             48*n  trailer: the n record headers again, in order
    T + 48n       8     T, the trailer's offset (u64)
                  4     n (u32)
                  4     CRC-32 of the trailer (u32)
                  8     magic b"CAIRNEND"

    record header: 32 block id | u8 kind | u8 codec | u16 0 | u32 stored length
                   | u32 plain length | u32 CRC-32 of the 44 bytes before it

kind is DATA (disk bytes) or PAGE (a page of a disk's extent map, maps.py); codec is RAW or
ZSTD (codec.py). The first record's stored bytes start at 16 + 48, each next record right
after the previous one's. The trailer lets a reader list a pack with one ranged read from its
end; the per-record headers let a damaged or truncated pack be read up to the damage: only the
blocks inside it that are actually lost are lost (scan_records).

PackWriter fills one pack at a time from many threads: appending a record is a short critical
section (a copy into the pack's current 8 MiB segment), and a closer thread writes each full
segment and closes a full pack (trailer, fsync, rename) while the next one fills, so the
writer's workers never wait for the disk. Gathering the bytes in page-aligned segments lets a
local store write them around the page cache (fsutil.py says why).
"""

from __future__ import annotations

import mmap
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from .backend import Backend, NewFile, join
from .codec import CODECS

PACKS_DIR = "packs"
TRASH_SUFFIX = ".gc"
MAGIC = b"CAIRNPAK"
END_MAGIC = b"CAIRNEND"
VERSION = 1
HEADER = struct.Struct("<8sII")
RECORD = struct.Struct("<32sBBHIII")
FOOTER = struct.Struct("<QII8s")
RECORD_SIZE = RECORD.size
FIRST_RECORD = HEADER.size
DATA = 0
PAGE = 1
KINDS = (DATA, PAGE)
PackKind = Literal[0, 1]
# A pack is gathered and written in pieces of SEGMENT bytes (page-aligned, so a local store
# writes them with direct I/O, fsutil.py); SEGMENTS_IN_FLIGHT full ones may wait for the closer
# thread, and KEPT_SEGMENTS idle ones are kept for the next pack.
SEGMENT = 8 << 20
SEGMENTS_IN_FLIGHT = 4
KEPT_SEGMENTS = 16

_PACK_NAME = re.compile("[0-9a-f]{32}")


class PackFormatError(Exception):
    """A pack's framing (header, trailer, footer) is not what this module writes."""


@dataclass(frozen=True)
class PackRecord:
    """One block in a pack: where its stored bytes are and how to read them."""

    block_id: bytes
    kind: int
    codec: int
    offset: int  # of the stored bytes, after the record header
    stored_length: int
    plain_length: int


def pack_file(pack: str) -> str:
    """The store path of pack `pack` (its 32-hex name)."""
    return join(PACKS_DIR, pack[:2], pack)


def trash_name(pack: str) -> str:
    """Where GC moves a pack before deleting it (packs/<hh>/.<name>.gc)."""
    return join(PACKS_DIR, pack[:2], f".{pack}{TRASH_SUFFIX}")


def is_pack_name(name: str) -> bool:
    return _PACK_NAME.fullmatch(name) is not None


def new_pack_name() -> str:
    return secrets.token_hex(16)


def record_header(block_id: bytes, kind: int, codec: int, stored_length: int, plain_length: int) -> bytes:
    head = RECORD.pack(block_id, kind, codec, 0, stored_length, plain_length, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def parse_record_header(data: bytes | memoryview, at: int) -> tuple[bytes, int, int, int, int] | None:
    """(id, kind, codec, stored length, plain length) of the header at `at`, None if it is not a valid one."""
    if at + RECORD_SIZE > len(data):
        return None
    block_id, kind, codec, zero, stored, plain, crc = RECORD.unpack_from(data, at)
    if crc != zlib.crc32(data[at:at + RECORD_SIZE - 4]) or zero or kind not in KINDS or codec not in CODECS:
        return None
    return block_id, kind, codec, stored, plain


def read_trailer(backend: Backend, name: str, size: int) -> list[PackRecord]:
    """The records of pack file `name` of `size` bytes, from its trailer (two ranged reads)."""
    if size < FIRST_RECORD + FOOTER.size:
        raise PackFormatError(f"{name}: {size} bytes is too short for a pack")
    trailer_at, count, crc, magic = FOOTER.unpack(backend.read_range(name, size - FOOTER.size, FOOTER.size))
    if magic != END_MAGIC or trailer_at + count * RECORD_SIZE + FOOTER.size != size:
        raise PackFormatError(f"{name}: no valid footer (truncated or damaged)")
    trailer = backend.read_range(name, trailer_at, count * RECORD_SIZE)
    if zlib.crc32(trailer) != crc:
        raise PackFormatError(f"{name}: its trailer does not match its checksum")
    records = []
    offset = FIRST_RECORD
    for n in range(count):
        header = parse_record_header(trailer, n * RECORD_SIZE)
        if header is None:
            raise PackFormatError(f"{name}: trailer entry {n} is invalid")
        block_id, kind, codec, stored, plain = header
        records.append(PackRecord(block_id, kind, codec, offset + RECORD_SIZE, stored, plain))
        offset += RECORD_SIZE + stored
    if offset != trailer_at:
        raise PackFormatError(f"{name}: its trailer does not add up to its records")
    return records


def scan_records(data: bytes) -> tuple[list[PackRecord], int]:
    """Salvage: walk the record headers from the start of a (possibly damaged) pack's bytes.

    Returns the records that are whole, and the offset where the walk stopped (the end of the
    last whole record: a trailer, or the damage).
    """
    if len(data) < FIRST_RECORD or HEADER.unpack_from(data)[:2] != (MAGIC, VERSION):
        return [], 0
    records = []
    at = FIRST_RECORD
    while True:
        header = parse_record_header(data, at)
        if header is None:
            break
        block_id, kind, codec, stored, plain = header
        if at + RECORD_SIZE + stored > len(data):
            break
        records.append(PackRecord(block_id, kind, codec, at + RECORD_SIZE, stored, plain))
        at += RECORD_SIZE + stored
    return records, at


@dataclass(frozen=True)
class ClosedPack:
    name: str
    size: int
    records: tuple[PackRecord, ...]


class _Segments:
    """Page-aligned SEGMENT-sized buffers, kept for reuse (at most KEPT_SEGMENTS idle): a pack's
    bytes are gathered in them, so the pack is written in large aligned pieces (direct I/O on a
    local store), and memory once touched is used again rather than faulted in anew."""

    def __init__(self) -> None:
        self._idle: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return mmap.mmap(-1, SEGMENT)

    def give(self, segment: mmap.mmap) -> None:
        with self._lock:
            if len(self._idle) < KEPT_SEGMENTS:
                segment.seek(0)
                self._idle.append(segment)
                return
        segment.close()


_SEGMENTS = _Segments()


class _OpenPack:
    """A pack being filled: its bytes gather in segments; each full one is handed back by
    append() for the closer thread to write, the rest is written by close()."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.name = name
        backend.make_dir(pack_file(name).rsplit("/", 1)[0])
        self.writer: AbstractContextManager[NewFile] = backend.atomic_writer(pack_file(name))
        self.file = self.writer.__enter__()
        self.failure: BaseException | None = None  # of a segment's write: the pack is discarded
        self._segment: mmap.mmap | None = _SEGMENTS.take()
        self.size = 0
        self._put(HEADER.pack(MAGIC, VERSION, 0))
        self.headers: list[bytes] = []
        self.records: list[PackRecord] = []

    def append(self, block_id: bytes, kind: int, codec: int, stored: bytes,
               plain_length: int) -> tuple[PackRecord, list[mmap.mmap]]:
        """The record, and the segments it filled (the caller writes them, in order, then gives them back)."""
        header = record_header(block_id, kind, codec, len(stored), plain_length)
        record = PackRecord(block_id, kind, codec, self.size + RECORD_SIZE, len(stored), plain_length)
        full = self._put(header) + self._put(stored)
        self.headers.append(header)
        self.records.append(record)
        return record, full

    def write_segment(self, segment: mmap.mmap, length: int = SEGMENT) -> None:
        """Write a segment's first length bytes (the closer thread's work) and give it back;
        after a failure, only give it back: the pack is discarded at close."""
        try:
            if self.failure is None:
                with memoryview(segment) as view:
                    self.file.write(view[:length])
        except BaseException as e:
            self.failure = e
        finally:
            _SEGMENTS.give(segment)

    def close(self) -> ClosedPack:
        """Trailer and footer, then durable under its final name."""
        trailer = b"".join(self.headers)
        records_end = self.size
        full = self._put(trailer) + self._put(FOOTER.pack(records_end, len(self.headers), zlib.crc32(trailer),
                                                           END_MAGIC))
        for segment in full:
            self.write_segment(segment)
        last, self._segment = self._segment, None
        assert last is not None
        self.write_segment(last, last.tell())
        if self.failure is not None:
            raise self.failure
        self.writer.__exit__(None, None, None)
        return ClosedPack(self.name, self.size, tuple(self.records))

    def discard(self) -> None:
        if self._segment is not None:
            _SEGMENTS.give(self._segment)
            self._segment = None
        error = PackAborted(self.name)
        self.writer.__exit__(PackAborted, error, None)  # removes the temporary file

    def _put(self, data: bytes) -> list[mmap.mmap]:
        """Copy data into the segments; returns those it filled."""
        full = []
        view = memoryview(data)
        while view:
            assert self._segment is not None
            n = self._segment.write(view[:SEGMENT - self._segment.tell()])
            view = view[n:]
            if self._segment.tell() == SEGMENT:
                full.append(self._segment)
                self._segment = _SEGMENTS.take()
        self.size += len(data)
        return full


class PackAborted(Exception):
    """Handed to a pack's atomic writer to discard it."""


class PackWriter:
    """Appends records of one kind to packs of about pack_size bytes; on_closed(pack) runs
    once a pack is durable under its name (on the closer thread).

    The closer thread also writes each pack's full segments as they fill, in order, at most
    SEGMENTS_IN_FLIGHT waiting at once (an append beyond that waits): the workers copy, the
    closer writes, and memory stays bounded whatever the store's speed."""

    def __init__(self, backend: Backend, pack_size: int, on_closed: Callable[[ClosedPack], None]) -> None:
        self._backend = backend
        self._pack_size = pack_size
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._open: _OpenPack | None = None
        self._closer = ThreadPoolExecutor(1, thread_name_prefix="cairn-pack-close")
        self._in_flight = threading.BoundedSemaphore(SEGMENTS_IN_FLIGHT)
        self._closing: list[Future[None]] = []
        self.closed: list[ClosedPack] = []

    def append(self, block_id: bytes, kind: int, codec: int, stored: bytes,
               plain_length: int) -> tuple[str, PackRecord]:
        """Write one record; returns (pack name, record). The pack is durable only after finish()."""
        with self._lock:
            if self._open is None:
                self._open = _OpenPack(self._backend, new_pack_name())
            pack = self._open
            record, full = pack.append(block_id, kind, codec, stored, plain_length)
            for segment in full:
                self._in_flight.acquire()
                self._closer.submit(self._write_segment, pack, segment)
            if pack.size >= self._pack_size:
                self._open = None
                self._closing.append(self._closer.submit(self._close, pack))
        return pack.name, record

    def finish(self) -> list[ClosedPack]:
        """Close the pack being filled and wait until every pack is durable; raise the first failure."""
        with self._lock:
            pack, self._open = self._open, None
            if pack is not None:
                self._closing.append(self._closer.submit(self._close, pack))
            closing, self._closing = self._closing, []
        for future in closing:
            future.result()
        return self.closed

    def abort(self) -> None:
        """Discard the pack being filled; packs already closed stay (GC removes them if unused)."""
        with self._lock:
            pack, self._open = self._open, None
        self._closer.shutdown(wait=True)
        if pack is not None:
            pack.discard()

    def _write_segment(self, pack: _OpenPack, segment: mmap.mmap) -> None:
        try:
            pack.write_segment(segment)
        finally:
            self._in_flight.release()

    def _close(self, pack: _OpenPack) -> None:
        try:
            closed = pack.close()
        except BaseException:
            pack.discard()
            raise
        self.closed.append(closed)
        self._on_closed(closed)
