"""--verify: read a restored target back and compare it with what the restore wrote.

The restore records the BLAKE3 of every extent it writes (each one's bytes already checked
against its block's id), so the comparison does not depend on how the store names blocks;
everything else must read back as zeros. Reading goes through the same target the restore
wrote, before it is closed (an NBD server that serves one client only is still there, and a
file is still under its partial name), front to back in READ_SIZE pieces whatever the
extents' sizes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import blake3

from .errors import VerifyError
from .targets import RestoreTarget

READ_SIZE = 32 << 20
_ZEROS = bytes(READ_SIZE)


class ReadBack:
    """What the target must hold: the digest of every extent written, zeros elsewhere."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._extents: list[tuple[int, int, bytes]] = []
        self._lock = threading.Lock()

    def expect(self, offset: int, data: bytes | memoryview) -> None:
        digest = blake3.blake3(data).digest()
        with self._lock:
            self._extents.append((offset, memoryview(data).nbytes, digest))

    def extents(self) -> list[tuple[int, int, bytes]]:
        return sorted(self._extents)


class _Reader:
    """Sequential reads of a target in READ_SIZE pieces, served as slices."""

    def __init__(self, target: RestoreTarget, size: int) -> None:
        self._target = target
        self._size = size
        self._start = 0
        self._data = b""

    def pieces(self, offset: int, end: int):
        while offset < end:
            if not self._start <= offset < self._start + len(self._data):
                self._start = offset
                self._data = self._target.read_at(offset, min(READ_SIZE, self._size - offset))
                if not self._data:
                    raise VerifyError(f"the target ends at byte {offset}, before its size {self._size}")
            at = offset - self._start
            piece = memoryview(self._data)[at:min(len(self._data), at + end - offset)]
            yield offset, piece
            offset += len(piece)


def verify_target(target: RestoreTarget, expected: ReadBack, what: str,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Raise VerifyError naming the first range whose bytes differ."""
    reader = _Reader(target, expected.size)
    position = 0
    for offset, length, digest in [*expected.extents(), (expected.size, 0, b"")]:
        for start, piece in reader.pieces(position, offset):
            if not _ZEROS.startswith(piece):
                raise VerifyError(f"verify failed: {what} holds data in bytes {start}-{start + len(piece) - 1}, "
                                  "which the backup has as zeros")
        hasher = blake3.blake3()
        for _, piece in reader.pieces(offset, offset + length):
            hasher.update(piece)
        if length and hasher.digest() != digest:
            raise VerifyError(f"verify failed: {what} differs from the backup in bytes {offset}-{offset + length - 1}")
        position = offset + length
        if progress is not None:
            progress(position, expected.size)
