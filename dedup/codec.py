"""Block identity, compression and (in encrypted stores) sealing.

A block's id is the BLAKE3-256 digest of its plaintext; in an encrypted store it is BLAKE3
keyed with the store's id key, so ids reveal nothing about content. A block is stored zstd
compressed (one frame, content size in the header, no zstd checksum: the id covers the
content), or raw when compression would save less than 1/64 of it: random data then costs
nothing to decompress and no zstd framing, and the record's codec byte says which (packs.py).
An encrypted store seals the stored bytes with AES-256-GCM, the block's id as associated data
(crypto.py), so a block moved under another id does not open.

Format 1's chunk files are the same thing without the raw choice: always one zstd frame,
sealed in an encrypted store (legacy.py reads them through decode()).

Compressors and decompressors are kept per thread: creating a zstd context per block was
measured 2x slower than reusing one, and the contexts are not thread-safe. Hashing and
compression release the GIL, so the writer's and the restore's thread pools use every core.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from .crypto import AeadFailed, StoreKey
from .errors import ChunkCorruptError

DIGEST_SIZE = 32
# Format 1's index entry of an all-zero chunk; no chunk is ever stored under it.
ZERO_DIGEST = bytes(DIGEST_SIZE)
# How a block's stored bytes are to be read.
RAW = 0
ZSTD = 1
CODECS = (RAW, ZSTD)

_Buffer = bytes | bytearray | memoryview


def content_digest(data: _Buffer) -> bytes:
    """Unkeyed BLAKE3: the digest of format 1's index files recorded in its manifests."""
    return blake3.blake3(data).digest()


MIN_MATCH = 4


class BlockCodec:
    def __init__(self, level: int, max_block_size: int, key: StoreKey | None = None) -> None:
        self._level = level
        self.max_block_size = max_block_size
        self._key = key
        self._local = threading.local()

    def block_id(self, data: _Buffer) -> bytes:
        if self._key is None:
            return blake3.blake3(data).digest()
        return blake3.blake3(data, key=self._key.id_key).digest()

    def encode(self, data: _Buffer, block_id: bytes) -> tuple[int, bytes]:
        """(codec, stored bytes) of a block."""
        plain = memoryview(data).nbytes
        frame = self._compressor().compress(data)
        codec, stored = (ZSTD, frame) if len(frame) <= plain - plain // 64 else (RAW, bytes(data))
        if self._key is not None:
            stored = self._key.seal(stored, block_id)
        return codec, stored

    def decode(self, stored: bytes | memoryview, codec: int, block_id: bytes, plain_length: int | None = None) -> bytes:
        """The plaintext of a stored block, checked against its id; ChunkCorruptError if it is not that block.

        stored may be a view into a larger read (a pack's records): a compressed block is
        decompressed from it without copying it out first.
        plain_length, when the caller knows it (a pack record says it), is checked before any
        allocation: a damaged header must not make us allocate whatever size it claims.
        """
        hex_id = block_id.hex()
        payload = stored
        if self._key is not None:
            try:
                payload = self._key.open(bytes(stored), block_id)
            except AeadFailed as e:
                raise ChunkCorruptError(f"block {hex_id}: {e} (damaged, or not sealed with this store's key)",
                                        hex_id) from None
        limit = self.max_block_size if plain_length is None else plain_length
        if codec == ZSTD:
            data = self._decompress(payload, hex_id, limit)
        elif codec == RAW:
            data = bytes(payload)
        else:
            raise ChunkCorruptError(f"block {hex_id}: unknown codec {codec}", hex_id)
        if plain_length is not None and len(data) != plain_length:
            raise ChunkCorruptError(f"block {hex_id}: {len(data)} bytes, its record says {plain_length}", hex_id)
        if self.block_id(data) != block_id:
            raise ChunkCorruptError(f"block {hex_id} is corrupt: content does not match its id", hex_id)
        return data

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(compression_params=self._parameters())
        return compressor

    def _parameters(self) -> zstandard.ZstdCompressionParameters:
        """The level's parameters, sized for one block (smaller tables: ~5% less CPU), and matches
        from 4 bytes where the level starts at 5 (~0.4% smaller on system files at level 3, for
        ~5% more CPU). Measured on bench/disk.py's disk in 1 MiB blocks: 608.4 MiB instead of 610.5, 3.40 CPU s
        instead of 3.24. Any zstd decoder reads the frames."""
        parameters = zstandard.ZstdCompressionParameters.from_level(self._level, source_size=self.max_block_size)
        if parameters.min_match <= MIN_MATCH:
            return parameters
        return zstandard.ZstdCompressionParameters.from_level(self._level, source_size=self.max_block_size,
                                                              min_match=MIN_MATCH)

    def _decompress(self, frame: bytes | memoryview, hex_id: str, limit: int) -> bytes:
        try:
            size = zstandard.frame_content_size(frame)
            if not 0 <= size <= limit:
                raise ChunkCorruptError(f"block {hex_id}: frame declares {size} bytes, at most {limit} expected",
                                        hex_id)
            decompressor = getattr(self._local, "decompressor", None)
            if decompressor is None:
                decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
            return decompressor.decompress(frame)
        except zstandard.ZstdError as e:
            raise ChunkCorruptError(f"block {hex_id}: not a valid zstd frame: {e}", hex_id) from e
