"""Format 1, read only: chunk files and fixed indexes, for listing, verifying, restoring and
upgrading stores written before packs.

    chunks/ab/cd/<64 hex>                        one chunk: a zstd frame (sealed if encrypted)
    backups/<vm>/<backup-id>/<disk>.index        the fixed index of one disk

A format-1 disk is cut into fixed-size chunks; its index lists every chunk's id, the zero id
for a chunk of zeros. Index layout, integers little-endian:

    offset  size  field
    0       8     magic b"CAIRNIDX"
    8       4     version (u32) = 1
    12      4     chunk_size in bytes (u32)
    16      8     disk_size in bytes (u64)
    24      8     chunk_count (u64) = ceil(disk_size / chunk_size)
    32      32*n  BLAKE3-256 digest of chunk 0 .. n-1

Chunk i covers bytes [i*chunk_size, min((i+1)*chunk_size, disk_size)). Readers see a
format-1 disk through the same MapEntry interface as a format-2 one: one extent per non-zero
chunk, the chunk standing for the block.
"""

from __future__ import annotations

import os
import re
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .backend import Backend, Entry, join
from .codec import DIGEST_SIZE, ZERO_DIGEST, ZSTD, BlockCodec
from .errors import ChunkMissingError, IndexCorruptError, StoreError
from .maps import MapEntry

CHUNKS_DIR = "chunks"
MAGIC = b"CAIRNIDX"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = _HEADER.size
_CHUNK_NAME = re.compile(f"[0-9a-f]{{{2 * DIGEST_SIZE}}}")


def chunk_count(disk_size: int, chunk_size: int) -> int:
    return -(-disk_size // chunk_size)


@dataclass(frozen=True)
class FixedIndex:
    chunk_size: int
    disk_size: int
    # All digests back to back: one bytes object instead of a million small ones.
    digests: bytes

    @property
    def chunk_count(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def digest(self, chunk_no: int) -> bytes:
        return self.digests[chunk_no * DIGEST_SIZE:(chunk_no + 1) * DIGEST_SIZE]

    def chunk_length(self, chunk_no: int) -> int:
        return min(self.chunk_size, self.disk_size - chunk_no * self.chunk_size)

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[MapEntry]:
        """The disk's data as extents, one per non-zero chunk, clipped to [start, end)."""
        end = self.disk_size if end is None else min(end, self.disk_size)
        for chunk_no in range(start // self.chunk_size, chunk_count(end, self.chunk_size)):
            digest = self.digest(chunk_no)
            if digest == ZERO_DIGEST:
                continue
            offset = chunk_no * self.chunk_size
            lo, hi = max(offset, start), min(offset + self.chunk_length(chunk_no), end)
            yield MapEntry(lo, hi - lo, digest, lo - offset)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> FixedIndex:
        """Parse an index file; `source` names it in error messages."""
        if len(data) < HEADER_SIZE:
            raise IndexCorruptError(f"index {source} is truncated ({len(data)} bytes)")
        magic, version, chunk_size, disk_size, count = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise IndexCorruptError(f"index {source} has bad magic {magic!r}")
        if version != VERSION:
            raise IndexCorruptError(f"index {source} has unsupported version {version}")
        if chunk_size == 0 or count != chunk_count(disk_size, chunk_size):
            raise IndexCorruptError(f"index {source}: {count} chunks of {chunk_size} bytes do not cover "
                                    f"{disk_size} bytes")
        expected = HEADER_SIZE + count * DIGEST_SIZE
        if len(data) != expected:
            raise IndexCorruptError(f"index {source} is {len(data)} bytes, expected {expected}")
        return cls(chunk_size, disk_size, data[HEADER_SIZE:])


def chunk_file(digest: bytes) -> str:
    hex_id = digest.hex()
    return join(CHUNKS_DIR, hex_id[0:2], hex_id[2:4], hex_id)


def chunk_digest(name: str) -> bytes | None:
    """The digest a chunk file name stands for, None if it is not a chunk's name."""
    return bytes.fromhex(name) if _CHUNK_NAME.fullmatch(name) else None


class ChunkFiles:
    """Format 1's chunks, read by id; the same read()/fetch() as blocks.BlockStore."""

    def __init__(self, backend: Backend, codec: BlockCodec) -> None:
        self.backend = backend
        self.codec = codec

    def read(self, digest: bytes) -> bytes:
        hex_id = digest.hex()
        name = chunk_file(digest)
        try:
            stored = self.backend.read(name)
        except FileNotFoundError:
            raise ChunkMissingError(f"chunk {hex_id} is missing from the store ({name})", hex_id) from None
        return self.codec.decode(stored, ZSTD, digest)

    def fetch(self, digests: Iterable[bytes], workers: int | None = None,
              ahead: int | None = None) -> Iterator[tuple[bytes, bytes | StoreError]]:
        """(id, plaintext or error) for every id, in the order given, read ahead on a pool."""
        workers = workers or os.cpu_count() or 1
        pool = ThreadPoolExecutor(workers, thread_name_prefix="cairn-chunks")
        try:
            pending: deque[tuple[bytes, Future[bytes]]] = deque()
            for digest in dict.fromkeys(digests):
                pending.append((digest, pool.submit(self.read, digest)))
                if len(pending) >= (ahead or 2 * workers):
                    yield _outcome(*pending.popleft())
            while pending:
                yield _outcome(*pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def files(self) -> Iterator[tuple[str, Entry]]:
        """(directory, entry) of every file under chunks/."""
        for prefix in sorted(self.backend.list(CHUNKS_DIR), key=lambda e: e.name):
            if not prefix.is_dir:
                continue
            for leaf in sorted(self.backend.list(join(CHUNKS_DIR, prefix.name)), key=lambda e: e.name):
                if leaf.is_dir:
                    directory = join(CHUNKS_DIR, prefix.name, leaf.name)
                    for entry in self.backend.list(directory):
                        if not entry.is_dir:
                            yield directory, entry


def _outcome(digest: bytes, future: Future[bytes]) -> tuple[bytes, bytes | StoreError]:
    try:
        return digest, future.result()
    except StoreError as e:
        return digest, e
