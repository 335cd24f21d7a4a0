"""Chunk identity and compression.

A chunk's id is the BLAKE3-256 digest of its plaintext. A stored chunk is a
single zstd frame with the content size in the frame header and no zstd
checksum (the BLAKE3 id already covers the content). There is no raw
variant: zstd stores incompressible input as raw blocks inside the frame, so
random data costs a few bytes per 128 KiB block and decompresses at memcpy
speed, and every chunk file has one format.

Compressors and decompressors are kept per thread: creating a zstd context
per chunk was measured 2x slower than reusing one, and the contexts are not
thread-safe. Hashing is single-threaded per call because chunks are
already processed in parallel by the writer's worker pool.
"""

import threading
from typing import BinaryIO

import blake3
import zstandard

from .errors import ChunkCorruptError

DIGEST_SIZE = 32
# Compressed output reaches the file in pieces this big. Each piece is a call back into
# Python that needs the GIL; zstd's default 128 KiB made hundreds per chunk, each waiting
# out the reader thread's switch interval, and halved backup throughput.
WRITE_SIZE = 4 << 20
# The index entry of an all-zero chunk; no chunk is ever stored under it.
ZERO_DIGEST = bytes(DIGEST_SIZE)


def content_digest(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()


class ChunkCodec:
    def __init__(self, level: int, max_chunk_size: int) -> None:
        self._level = level
        self._max_chunk_size = max_chunk_size
        self._local = threading.local()

    def compress_into(self, file: BinaryIO, data: bytes | bytearray | memoryview) -> None:
        """Write data to file as one zstd frame.

        Streaming into the file instead of compressing to one bytes object
        spares a chunk-sized output allocation per chunk; fresh 64 MiB
        allocations are page-faulted in every time and measured ~40% slower.
        """
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self._level)
        # size= puts the content size in the frame header. No `with`: its exit would end the
        # frame even after a failed write and replace the real error (e.g. "No space left on
        # device") with zstd's "Src size is incorrect".
        writer = compressor.stream_writer(file, size=memoryview(data).nbytes, closefd=False, write_size=WRITE_SIZE)
        writer.write(data)
        writer.flush(zstandard.FLUSH_FRAME)

    def decompress(self, frame: bytes, chunk_id: str) -> bytes:
        """Decompress one stored frame; its digest is checked by the caller."""
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
