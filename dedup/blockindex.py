"""The block index: where each block is (pack, offset, length), for the whole store.

    index/<32 hex>           one index file: the records of some packs

It is a cache of what the packs say about themselves (packs.py): every index file can be
lost or damaged and the index is still complete, because loading it reads the trailer of each
pack that no sound index file covers. Index files are written whole and atomically and never
changed: a backup writes one for the packs it wrote before its manifest; GC writes one for
every pack it keeps, then removes the files it read; `cairn store repair` rebuilds them all.
A crash between a pack and its index file leaves an unindexed pack, read from its trailer
until the next index file covers it.

Index file layout, integers little-endian:

    0       8     magic b"CAIRNBIX"
    8       4     version (u32) = 1
    12      4     pack count (u32)
    then per pack:
            16    pack name (the 32 hex digits as 16 bytes)
            8     pack size in bytes (u64): a pack of another size is not the one described
            4     record count (u32)
            48*n  records: 32 block id | u8 kind | u8 codec | u16 0 | u32 offset of the
                  stored bytes | u32 stored length | u32 plain length
    last    32    BLAKE3-256 of everything before it

In memory the index maps a block id to one record (a block stored twice, e.g. by two
backups racing or by an interrupted repack, is found at either place), and keeps every
pack's records for GC, verify and stats. About 200 bytes per block: 1 TiB of unique data
in 2 MiB blocks is about 512 K blocks, 100 MB.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import blake3

from .backend import Backend, Entry, join, write_file
from .packs import (
    PACKS_DIR,
    TRASH_SUFFIX,
    PackFormatError,
    PackRecord,
    is_pack_name,
    new_pack_name,
    pack_file,
    read_trailer,
    trash_name,
)

INDEX_DIR = "index"
MAGIC = b"CAIRNBIX"
VERSION = 1
_HEADER = struct.Struct("<8sII")
_PACK = struct.Struct("<16sQI")
_RECORD = struct.Struct("<32sBBHIII")
_DIGEST = 32


class IndexFileError(Exception):
    """An index file is not what this module writes (damaged, truncated, foreign)."""


@dataclass(frozen=True)
class PackInfo:
    name: str
    size: int
    mtime_ns: int
    records: tuple[PackRecord, ...]
    trashed: bool = False  # only its `.gc` name is there: a GC is deciding about it, or crashed


@dataclass
class IndexLoad:
    """What loading found besides the records: the problems repair and verify report."""

    index_files: tuple[str, ...] = ()  # the sound ones, by name
    damaged_files: dict[str, str] = field(default_factory=dict)  # index file -> why it was ignored
    unindexed: tuple[str, ...] = ()  # packs read from their own trailer
    unreadable: dict[str, str] = field(default_factory=dict)  # pack -> why its records are unknown
    # Blocks an index file places in a pack that is gone, or not the one described: block id -> pack.
    lost_records: dict[bytes, str] = field(default_factory=dict)


class BlockIndex:
    """Loaded incrementally: a load reads only the index files and pack trailers it has not read
    before, so a long-running process can load again before each backup and on a miss."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._by_id: dict[bytes, tuple[str, PackRecord]] = {}
        self.packs: dict[str, PackInfo] = {}
        self.load_report = IndexLoad()
        self._files: dict[str, dict[str, tuple[int, tuple[PackRecord, ...]]]] = {}  # parsed, by name
        self._trailers: dict[str, tuple[int, tuple[PackRecord, ...]]] = {}  # pack -> (size, records)

    def load(self) -> IndexLoad:
        """Bring the index up to date with the index files and the packs now in the store."""
        present = list_packs(self._backend, trashed=True)
        listed = {e.name for e in self._backend.list(INDEX_DIR) if not e.is_dir and not e.name.startswith(".")}
        damaged = {}
        for name in sorted(listed - self._files.keys()):
            try:
                self._files[name] = parse_index_file(self._backend.read(join(INDEX_DIR, name)), name)
            except FileNotFoundError:
                continue  # consolidated by a GC while we listed
            except IndexFileError as e:
                damaged[name] = str(e)
        for name in self._files.keys() - listed:
            del self._files[name]
        described: dict[str, tuple[int, tuple[PackRecord, ...]]] = {}
        for file_packs in self._files.values():
            described.update(file_packs)
        packs: dict[str, PackInfo] = {}
        unindexed, unreadable = [], {}
        for name, entry in present.items():
            trashed = entry.name != name
            known = described.get(name)
            if known is None or known[0] != entry.size:
                known = self._trailers.get(name)
                if known is None or known[0] != entry.size:
                    try:
                        path = trash_name(name) if trashed else pack_file(name)
                        known = self._trailers[name] = (entry.size, tuple(read_trailer(self._backend, path,
                                                                                       entry.size)))
                    except FileNotFoundError:
                        continue
                    except PackFormatError as e:
                        unreadable[name] = str(e)
                        continue
                if not trashed:
                    unindexed.append(name)
            packs[name] = PackInfo(name, entry.size, entry.mtime_ns, known[1], trashed)
        for name in self._trailers.keys() - present.keys():
            del self._trailers[name]
        with self._lock:
            by_id = self._by_id
            for name in self.packs.keys() - packs.keys():
                for record in self.packs[name].records:
                    if by_id.get(record.block_id, ("",))[0] == name:
                        del by_id[record.block_id]
            for name in packs.keys() - self.packs.keys():
                for record in packs[name].records:
                    by_id.setdefault(record.block_id, (name, record))
            lost = {r.block_id: name for name, (_, records) in described.items() if name not in packs
                    for r in records if r.block_id not in by_id}
            report = IndexLoad(tuple(sorted(self._files)), damaged, tuple(sorted(unindexed)), unreadable, lost)
            self.packs, self.load_report = packs, report
        return report

    def get(self, block_id: bytes) -> tuple[str, PackRecord] | None:
        """(pack, record) of a block, None if no pack holds it."""
        return self._by_id.get(block_id)

    def pack_of(self, block_id: bytes) -> str | None:
        """The pack the index finds a block in, None if no pack holds it."""
        found = self._by_id.get(block_id)
        return found[0] if found is not None else None

    def __contains__(self, block_id: bytes) -> bool:
        return block_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def forget(self, block_id: bytes) -> None:
        """Its pack turned out to be gone (GC repacked it): look elsewhere, or write it anew."""
        with self._lock:
            self._by_id.pop(block_id, None)

    def add(self, info: PackInfo) -> None:
        """A pack this process just closed."""
        with self._lock:
            self.packs[info.name] = info
            for record in info.records:
                self._by_id.setdefault(record.block_id, (info.name, record))

    def drop_pack(self, name: str) -> None:
        """The pack is gone; its blocks are found elsewhere only after the next load()."""
        with self._lock:
            info = self.packs.pop(name, None)
            if info is None:
                return
            for record in info.records:
                if self._by_id.get(record.block_id, ("",))[0] == name:
                    del self._by_id[record.block_id]


def list_packs(backend: Backend, trashed: bool = False) -> dict[str, Entry]:
    """Every pack file by pack name, with its size and mtime; with trashed, also the packs that
    are there only under their `.gc` name (the entry then has that name)."""
    packs, trash = {}, {}
    for prefix in backend.list(PACKS_DIR):
        if prefix.is_dir and len(prefix.name) == 2:
            for entry in backend.list(join(PACKS_DIR, prefix.name)):
                if entry.is_dir:
                    continue
                if is_pack_name(entry.name):
                    packs[entry.name] = entry
                elif trashed and entry.name.startswith(".") and entry.name.endswith(TRASH_SUFFIX):
                    trash[entry.name[1:-len(TRASH_SUFFIX)]] = entry
    return {**{n: e for n, e in trash.items() if is_pack_name(n)}, **packs}


def write_index_file(backend: Backend, packs: Iterable[PackInfo]) -> str:
    """Write one index file describing `packs`; returns its name."""
    parts = [b""]
    count = 0
    for info in packs:
        count += 1
        parts.append(_PACK.pack(bytes.fromhex(info.name), info.size, len(info.records)))
        parts.extend(_RECORD.pack(r.block_id, r.kind, r.codec, 0, r.offset, r.stored_length, r.plain_length)
                     for r in info.records)
    parts[0] = _HEADER.pack(MAGIC, VERSION, count)
    body = b"".join(parts)
    name = new_pack_name()
    write_file(backend, join(INDEX_DIR, name), body + blake3.blake3(body).digest())
    return name


def parse_index_file(data: bytes, source: str) -> dict[str, tuple[int, tuple[PackRecord, ...]]]:
    """pack name -> (pack size, records) as the index file describes them."""
    if len(data) < _HEADER.size + _DIGEST or blake3.blake3(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise IndexFileError(f"index file {source} is damaged: its checksum does not match")
    magic, version, count = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise IndexFileError(f"index file {source} is not a version {VERSION} block index")
    packs = {}
    at = _HEADER.size
    try:
        for _ in range(count):
            raw_name, size, records = _PACK.unpack_from(data, at)
            at += _PACK.size
            described = []
            for _ in range(records):
                block_id, kind, codec, _zero, offset, stored, plain = _RECORD.unpack_from(data, at)
                described.append(PackRecord(block_id, kind, codec, offset, stored, plain))
                at += _RECORD.size
            packs[raw_name.hex()] = (size, tuple(described))
    except struct.error as e:
        raise IndexFileError(f"index file {source} is truncated: {e}") from e
    if at != len(data) - _DIGEST:
        raise IndexFileError(f"index file {source} has {len(data) - _DIGEST - at} bytes too many")
    return packs
