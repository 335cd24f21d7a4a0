"""Content-addressed chunk files: chunks/ab/cd/<blake3-hex>.

Two levels of 256 directories keep directories small (a 10 TiB store of
64 MiB chunks has ~3 entries per leaf; of 1 MiB chunks, ~160). Directories
are created on first use rather than all 65536 up front, so a new store is
cheap. A chunk file is written to a temporary sibling, fsync'd, renamed and
its directory fsync'd: after a crash it is whole or absent, so existence
alone means "stored".
"""

import os
from collections.abc import Iterator
from pathlib import Path

from .codec import DIGEST_SIZE, ChunkCodec, content_digest
from .errors import ChunkCorruptError, ChunkMissingError
from .fsutil import atomic_file, mkdir_durable


class ChunkStore:
    def __init__(self, root: Path, codec: ChunkCodec) -> None:
        self.root = root
        self._codec = codec
        # Leaf directories this process has already made durable; a set
        # because GIL-atomic add/contains is all the workers need.
        self._ready_dirs: set[Path] = set()

    def path(self, digest: bytes) -> Path:
        hex_id = digest.hex()
        return self.root / hex_id[0:2] / hex_id[2:4] / hex_id

    def touch(self, digest: bytes) -> bool:
        """Whether the chunk is stored; if so, set its mtime to now.

        A writer that references a chunk it did not write calls this instead
        of checking existence: the fresh mtime tells a concurrent GC the
        chunk is in use (see gc.py). Touching and checking in one call
        leaves no gap in which GC could remove a chunk found to exist.
        """
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            return False
        return True

    def insert(self, digest: bytes, data: bytes | bytearray | memoryview) -> int:
        """Compress and store data under digest; return the bytes written."""
        path = self.path(digest)
        self._ensure_dir(path.parent)
        with atomic_file(path) as f:
            self._codec.compress_into(f, data)
            return f.tell()

    def load(self, digest: bytes) -> bytes:
        """Return the chunk's plaintext, verified against its id."""
        chunk_id = digest.hex()
        path = self.path(digest)
        try:
            frame = path.read_bytes()
        except FileNotFoundError:
            raise ChunkMissingError(f"chunk {chunk_id} is missing from the store ({path})", chunk_id) from None
        data = self._codec.decompress(frame, chunk_id)
        if content_digest(data) != digest:
            raise ChunkCorruptError(f"chunk {chunk_id} is corrupt: content does not match its id ({path})", chunk_id)
        return data

    def prefix_dirs(self) -> list[Path]:
        """The first-level directories (chunks/ab), sorted: a store-wide walk goes one at a time."""
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _is_hex(p.name, 2))

    def entries(self, prefix_dir: Path) -> Iterator[os.DirEntry[str]]:
        """Every file under one prefix directory: chunks, temp files, GC leftovers."""
        for leaf in sorted(os.scandir(prefix_dir), key=lambda e: e.name):
            if leaf.is_dir(follow_symlinks=False) and _is_hex(leaf.name, 2):
                yield from os.scandir(leaf.path)

    def _ensure_dir(self, leaf: Path) -> None:
        if leaf in self._ready_dirs:
            return
        mkdir_durable(leaf.parent, exist_ok=True)
        mkdir_durable(leaf, exist_ok=True)
        self._ready_dirs.add(leaf)


def chunk_digest(name: str) -> bytes | None:
    """The digest a chunk file name stands for, None if it is not a chunk's name."""
    return bytes.fromhex(name) if _is_hex(name, 2 * DIGEST_SIZE) else None


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and all(c in _HEX_DIGITS for c in name)


_HEX_DIGITS = frozenset("0123456789abcdef")
