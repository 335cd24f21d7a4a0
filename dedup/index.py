"""Fixed-size chunk index: the ordered list of chunk ids of one disk image.

Binary layout, all integers little-endian:

    offset  size  field
    0       8     magic b"CAIRNIDX"
    8       4     version (u32) = 1
    12      4     chunk_size in bytes (u32)
    16      8     disk_size in bytes (u64)
    24      8     chunk_count (u64) = ceil(disk_size / chunk_size)
    32      32*n  BLAKE3-256 digest of chunk 0 .. n-1

Chunk i covers bytes [i*chunk_size, min((i+1)*chunk_size, disk_size)); only
the last chunk can be short. A digest of 32 zero bytes marks an all-zero
chunk, which is never stored.
"""

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .codec import DIGEST_SIZE, ZERO_DIGEST
from .errors import IndexCorruptError

MAGIC = b"CAIRNIDX"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")
HEADER_SIZE = _HEADER.size


def chunk_count(disk_size: int, chunk_size: int) -> int:
    return -(-disk_size // chunk_size)


def chunk_length(disk_size: int, chunk_size: int, chunk_no: int) -> int:
    """Length of chunk chunk_no; only the last chunk of a disk is short."""
    return min(chunk_size, disk_size - chunk_no * chunk_size)


@dataclass(frozen=True)
class FixedIndex:
    chunk_size: int
    disk_size: int
    # All digests back to back: one bytes object instead of a million small
    # ones for a large disk with small chunks.
    digests: bytes

    def __post_init__(self) -> None:
        expected = chunk_count(self.disk_size, self.chunk_size) * DIGEST_SIZE
        if len(self.digests) != expected:
            raise ValueError(f"index for {self.disk_size} bytes needs {expected} digest bytes, got {len(self.digests)}")

    @property
    def chunk_count(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def digest(self, chunk_no: int) -> bytes:
        if not 0 <= chunk_no < self.chunk_count:
            raise IndexError(f"chunk {chunk_no} out of range (index has {self.chunk_count})")
        start = chunk_no * DIGEST_SIZE
        return self.digests[start : start + DIGEST_SIZE]

    def stored_chunks(self) -> Iterator[tuple[int, bytes]]:
        """(chunk number, digest) of every chunk that has a file in the store: all but the zero ones."""
        digests = self.digests
        for chunk_no in range(self.chunk_count):
            digest = digests[chunk_no * DIGEST_SIZE : (chunk_no + 1) * DIGEST_SIZE]
            if digest != ZERO_DIGEST:
                yield chunk_no, digest

    def is_zero(self, chunk_no: int) -> bool:
        return self.digest(chunk_no) == ZERO_DIGEST

    def chunk_offset(self, chunk_no: int) -> int:
        return chunk_no * self.chunk_size

    def chunk_length(self, chunk_no: int) -> int:
        return chunk_length(self.disk_size, self.chunk_size, chunk_no)

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(MAGIC, VERSION, self.chunk_size, self.disk_size, self.chunk_count)
        return header + self.digests

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "FixedIndex":
        """Parse an index file; `source` names it in error messages."""
        if len(data) < HEADER_SIZE:
            raise IndexCorruptError(f"index {source} is truncated ({len(data)} bytes)")
        magic, version, chunk_size, disk_size, count = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise IndexCorruptError(f"index {source} has bad magic {magic!r}")
        if version != VERSION:
            raise IndexCorruptError(f"index {source} has unsupported version {version}")
        if chunk_size == 0 or count != chunk_count(disk_size, chunk_size):
            raise IndexCorruptError(
                f"index {source}: {count} chunks of {chunk_size} bytes do not cover {disk_size} bytes"
            )
        expected = HEADER_SIZE + count * DIGEST_SIZE
        if len(data) != expected:
            raise IndexCorruptError(f"index {source} is {len(data)} bytes, expected {expected}")
        return cls(chunk_size, disk_size, data[HEADER_SIZE:])
