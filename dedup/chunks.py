"""Content-addressed chunk files: chunks/ab/cd/<id-hex>.

Two levels of 256 directories keep directories small (a 10 TiB store of
64 MiB chunks has ~3 entries per leaf; of 1 MiB chunks, ~160). Directories
are created on first use rather than all 65536 up front, so a new store is
cheap. A chunk file is written atomically (backend.py): after a crash it is
whole or absent, so existence alone means "stored".
"""

import re
from collections.abc import Iterator
from pathlib import Path

from .backend import Backend, Entry, join
from .codec import DIGEST_SIZE, ChunkCodec
from .errors import ChunkCorruptError, ChunkMissingError
from .local import local_file

CHUNKS_DIR = "chunks"


class ChunkStore:
    def __init__(self, backend: Backend, codec: ChunkCodec) -> None:
        self._backend = backend
        self.codec = codec
        # Leaf directories this process has already made; a set because
        # GIL-atomic add/contains is all the workers need.
        self._ready_dirs: set[str] = set()

    @staticmethod
    def name(digest: bytes) -> str:
        hex_id = digest.hex()
        return join(CHUNKS_DIR, hex_id[0:2], hex_id[2:4], hex_id)

    def path(self, digest: bytes) -> Path:
        """The chunk's file in a local store (tools and tests that inspect files)."""
        return local_file(self._backend, self.name(digest))

    def touch(self, digest: bytes) -> bool:
        """Whether the chunk is stored; if so, set its mtime to now.

        A writer that references a chunk it did not write calls this instead
        of checking existence: the fresh mtime tells a concurrent GC the
        chunk is in use (see gc.py). Touching and checking in one call
        leaves no gap in which GC could remove a chunk found to exist.
        """
        return self._backend.touch(self.name(digest))

    def insert(self, digest: bytes, data: bytes | bytearray | memoryview) -> int:
        """Encode and store data under digest; return the bytes written."""
        name = self.name(digest)
        self._ensure_dir(name.rsplit("/", 1)[0])
        with self._backend.atomic_writer(name) as f:
            self.codec.encode_into(f, data, digest)
            return f.tell()

    def load(self, digest: bytes) -> bytes:
        """Return the chunk's plaintext, verified against its id."""
        chunk_id = digest.hex()
        name = self.name(digest)
        try:
            stored = self._backend.read(name)
        except FileNotFoundError:
            raise ChunkMissingError(f"chunk {chunk_id} is missing from the store ({name})", chunk_id) from None
        data = self.codec.decode(stored, digest)
        if self.codec.chunk_id(data) != digest:
            raise ChunkCorruptError(f"chunk {chunk_id} is corrupt: content does not match its id ({name})", chunk_id)
        return data

    def prefix_dirs(self) -> list[str]:
        """The first-level directories (chunks/ab), sorted: a store-wide walk goes one at a time."""
        return sorted(
            join(CHUNKS_DIR, e.name) for e in self._backend.list(CHUNKS_DIR) if e.is_dir and _is_hex(e.name, 2)
        )

    def entries(self, prefix_dir: str) -> Iterator[tuple[str, Entry]]:
        """(leaf directory, entry) of every file under one prefix directory: chunks, temp files, GC leftovers."""
        for leaf in sorted(self._backend.list(prefix_dir), key=lambda e: e.name):
            if leaf.is_dir and _is_hex(leaf.name, 2):
                leaf_dir = join(prefix_dir, leaf.name)
                for entry in self._backend.list(leaf_dir):
                    if not entry.is_dir:
                        yield leaf_dir, entry

    def _ensure_dir(self, leaf: str) -> None:
        if leaf in self._ready_dirs:
            return
        self._backend.make_dir(leaf.rsplit("/", 1)[0])
        self._backend.make_dir(leaf)
        self._ready_dirs.add(leaf)


def chunk_digest(name: str) -> bytes | None:
    """The digest a chunk file name stands for, None if it is not a chunk's name."""
    return bytes.fromhex(name) if _CHUNK_NAME.fullmatch(name) else None


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and _HEX.fullmatch(name) is not None


# Compiled patterns: GC and stats test every file name in the store.
_CHUNK_NAME = re.compile(f"[0-9a-f]{{{2 * DIGEST_SIZE}}}")
_HEX = re.compile("[0-9a-f]+")
