"""Content-addressed chunk files: chunks/ab/cd/<blake3-hex>.

Two levels of 256 directories keep directories small (a 10 TiB store of
64 MiB chunks has ~3 entries per leaf; of 1 MiB chunks, ~160). Directories
are created on first use rather than all 65536 up front, so a new store is
cheap. A chunk file is written to a temporary sibling, fsync'd, renamed and
its directory fsync'd: after a crash it is whole or absent, so existence
alone means "stored".
"""

from pathlib import Path

from .codec import ChunkCodec, content_digest
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

    def exists(self, digest: bytes) -> bool:
        return self.path(digest).exists()

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

    def _ensure_dir(self, leaf: Path) -> None:
        if leaf in self._ready_dirs:
            return
        mkdir_durable(leaf.parent, exist_ok=True)
        mkdir_durable(leaf, exist_ok=True)
        self._ready_dirs.add(leaf)
