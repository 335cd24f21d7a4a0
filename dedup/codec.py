"""Chunk identity, compression and (in encrypted stores) sealing.

A chunk's id is the BLAKE3-256 digest of its plaintext; in an encrypted
store it is BLAKE3 keyed with the store's id key, so ids reveal nothing
about content. A stored chunk is a single zstd frame with the content size
in the frame header and no zstd checksum (the id already covers the
content); an encrypted store seals that frame with AES-256-GCM, the chunk's
id as associated data (crypto.py). There is no raw variant: zstd stores
incompressible input as raw blocks inside the frame, so random data costs a
few bytes per 128 KiB block and decompresses at memcpy speed, and every
chunk file has one format.

Compressors and decompressors are kept per thread: creating a zstd context
per chunk was measured 2x slower than reusing one, and the contexts are not
thread-safe. Hashing is single-threaded per call because chunks are
already processed in parallel by the writer's worker pool.
"""

import threading
from typing import BinaryIO

import blake3
import zstandard

from .crypto import AeadFailed, StoreKey
from .errors import ChunkCorruptError

DIGEST_SIZE = 32
# Compressed output reaches the file in pieces this big. Each piece is a call back into
# Python that needs the GIL; zstd's default 128 KiB made hundreds per chunk, each waiting
# out the reader thread's switch interval, and halved backup throughput.
WRITE_SIZE = 4 << 20
# The index entry of an all-zero chunk; no chunk is ever stored under it.
ZERO_DIGEST = bytes(DIGEST_SIZE)

_Buffer = bytes | bytearray | memoryview


def content_digest(data: _Buffer) -> bytes:
    """Unkeyed BLAKE3: the digest of index files recorded in manifests."""
    return blake3.blake3(data).digest()


class ChunkCodec:
    def __init__(self, level: int, max_chunk_size: int, key: StoreKey | None = None) -> None:
        self._level = level
        self._max_chunk_size = max_chunk_size
        self._key = key
        self._local = threading.local()

    def chunk_id(self, data: _Buffer) -> bytes:
        if self._key is None:
            return blake3.blake3(data).digest()
        return blake3.blake3(data, key=self._key.id_key).digest()

    def encode_into(self, file: BinaryIO, data: _Buffer, digest: bytes) -> None:
        """Write the stored form of a chunk to file."""
        if self._key is None:
            self.compress_into(file, data)
        else:
            frame = self._compressor().compress(data)
            file.write(self._key.seal(frame, digest))

    def decode(self, stored: bytes, digest: bytes) -> bytes:
        """The plaintext of a stored chunk; its id is checked by the caller."""
        chunk_id = digest.hex()
        frame = stored
        if self._key is not None:
            try:
                frame = self._key.open(stored, digest)
            except AeadFailed as e:
                raise ChunkCorruptError(f"chunk {chunk_id}: {e} (damaged, or not sealed with this store's key)",
                                        chunk_id) from None
        return self._decompress(frame, chunk_id)

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self._level)
        return compressor

    def compress_into(self, file: BinaryIO, data: _Buffer) -> None:
        """Stream one zstd frame into file.

        Streaming instead of compressing to one bytes object spares a
        chunk-sized output allocation per chunk; fresh 64 MiB allocations
        are page-faulted in every time and measured ~40% slower.
        """
        # size= puts the content size in the frame header. No `with`: its exit would end the
        # frame even after a failed write and replace the real error (e.g. "No space left on
        # device") with zstd's "Src size is incorrect".
        writer = self._compressor().stream_writer(
            file, size=memoryview(data).nbytes, closefd=False, write_size=WRITE_SIZE
        )
        writer.write(data)
        writer.flush(zstandard.FLUSH_FRAME)

    def _decompress(self, frame: bytes, chunk_id: str) -> bytes:
        try:
            # Checked before decompressing: a damaged header must not make
            # us allocate whatever size it claims.
            size = zstandard.frame_content_size(frame)
            if not 0 <= size <= self._max_chunk_size:
                raise ChunkCorruptError(
                    f"chunk {chunk_id}: frame declares {size} bytes, chunk size is {self._max_chunk_size}",
                    chunk_id,
                )
            decompressor = getattr(self._local, "decompressor", None)
            if decompressor is None:
                decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
            return decompressor.decompress(frame)
        except zstandard.ZstdError as e:
            raise ChunkCorruptError(f"chunk {chunk_id}: not a valid zstd frame: {e}", chunk_id) from e
