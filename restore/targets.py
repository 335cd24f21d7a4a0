"""Where a restore writes: one small protocol, one class per kind of target.

Every target is created empty, so unwritten ranges read back as zeros; the
restorer relies on that to skip zero chunks and zero blocks and keep the
result thin.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Protocol

from .errors import RestoreError, TargetWriteError
from .nbd_target import NbdTarget, QemuNbdServer


class RestoreTarget(Protocol):
    def write_at(self, offset: int, data: bytes | memoryview) -> None: ...

    def finish(self) -> None:
        """Make everything written durable; the target is complete after this."""

    def abort(self) -> None:
        """Release resources after a failure; the caller discards the result."""


class RawFileTarget:
    """A sparse raw image: truncated to size, data written with pwrite."""

    def __init__(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            os.ftruncate(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def finish(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


class Qcow2FileTarget:
    """A new qcow2 image, written through a private qemu-nbd.

    qemu-nbd does the qcow2 allocation; a fresh image reads as zeros, so
    only clusters that receive data are allocated. qcow2 sizes are whole
    512-byte sectors: a disk of another size gets a zero-filled tail.
    """

    def __init__(self, path: Path, size: int) -> None:
        # Absolute, so that qemu never reads a relative "name:with:colons" as
        # a protocol prefix.
        path = path.absolute()
        create = ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)]
        result = subprocess.run(create, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise TargetWriteError(f"qemu-img could not create {path}: {result.stderr.strip()}")
        self._server = QemuNbdServer(path, "qcow2")
        try:
            self._nbd = NbdTarget.connect_unix(self._server.socket)
        except BaseException:
            self._server.kill()
            raise

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        self._nbd.write_at(offset, data)

    def finish(self) -> None:
        self._nbd.finish()
        # qemu-nbd flushed on our request and exits now that we disconnected.
        self._server.wait()

    def abort(self) -> None:
        self._nbd.abort()
        self._server.kill()


TARGET_FORMATS = ("raw", "qcow2")


def create_target(fmt: str, path: Path, size: int) -> RestoreTarget:
    """Create an empty image of `size` bytes at path (which must not exist)."""
    if fmt == "raw":
        return RawFileTarget(path, size)
    if fmt == "qcow2":
        return Qcow2FileTarget(path, size)
    raise RestoreError(f"unsupported target format {fmt!r} (supported: {', '.join(TARGET_FORMATS)})")
