"""--verify: read a restored target back and compare it with what the backup holds.

The expected digest of each chunk is taken from the bytes the restore wrote
(every one already checked against its chunk id), so the comparison does not
depend on how the store names chunks. Reading goes through the same target
the restore wrote, before it is closed: an NBD server that serves one client
only is still there, and a file is still under its partial name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import blake3

from dedup import FixedIndex

from .errors import VerifyError
from .targets import RestoreTarget

READ_SIZE = 32 << 20


@cache
def _zero_digest(length: int) -> bytes:
    return blake3.blake3(bytes(length)).digest()


class ReadBack:
    """The digest every chunk of the target must have."""

    def __init__(self, index: FixedIndex) -> None:
        self.index = index
        self._digests: dict[int, bytes] = {}

    def expect(self, chunk_no: int, data: bytes) -> None:
        self._digests[chunk_no] = blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()

    def digest(self, chunk_no: int) -> bytes:
        if chunk_no in self._digests:
            return self._digests[chunk_no]
        return _zero_digest(self.index.chunk_length(chunk_no))


def verify_target(target: RestoreTarget, expected: ReadBack, what: str,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Raise VerifyError naming the first chunk whose bytes differ."""
    index = expected.index
    for chunk_no in range(index.chunk_count):
        offset, length = index.chunk_offset(chunk_no), index.chunk_length(chunk_no)
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        for start in range(offset, offset + length, READ_SIZE):
            hasher.update(target.read_at(start, min(READ_SIZE, offset + length - start)))
        if hasher.digest() != expected.digest(chunk_no):
            raise VerifyError(f"verify failed: {what} differs from the backup in chunk {chunk_no} "
                              f"(bytes {offset}-{offset + length - 1})")
        if progress is not None:
            progress(offset + length, index.disk_size)
