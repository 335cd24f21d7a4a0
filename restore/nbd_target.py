"""Writing into NBD exports: a libnbd restore target and a private qemu-nbd.

NbdTarget works against any NBD server (a private qemu-nbd, or a server the
user names by URL), so it knows nothing about image files; it is given a
connected libnbd handle. QemuNbdServer runs one qemu-nbd for one client on a unix
socket in a private directory; without --persistent, qemu-nbd exits by
itself once that client disconnects, which is how a finished restore shuts
it down cleanly. It is a helper (procs): it dies with the restoring process
even before its client connects, when nothing else would end it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import nbd

from procs import Holding

from .errors import TargetWriteError

# qemu-nbd refuses requests over 32 MiB.
MAX_REQUEST = 32 << 20
# NBD lengths are 32-bit; write-zeroes carries no payload, so large pieces are cheap.
MAX_ZERO_REQUEST = 1 << 30


class NbdTarget:
    """A RestoreTarget writing through libnbd's synchronous pwrite.

    Not aio_pwrite: libnbd 1.14's Python binding never releases an nbd.Buffer handed
    to an aio call, so every restored chunk would stay in memory. The synchronous
    call releases the GIL, so reading and decompressing on other threads overlap it.
    """

    concurrent_writes = 1  # libnbd runs one synchronous call per handle at a time

    def __init__(self, handle: nbd.NBD, description: str, fresh: bool) -> None:
        """fresh: the export reads as zeros already, so zero ranges need no request."""
        self._handle = handle
        self._description = description
        self._fresh = fresh

    @classmethod
    def connect_unix(cls, socket_path: Path, fresh: bool, timeout: float = 10.0) -> NbdTarget:
        """Connect, retrying while a just-started server is not listening yet."""
        deadline = time.monotonic() + timeout
        while True:
            handle = nbd.NBD()
            try:
                handle.connect_unix(str(socket_path))
                return cls(handle, f"NBD server on {socket_path}", fresh)
            except nbd.Error as e:
                if time.monotonic() > deadline:
                    raise TargetWriteError(f"cannot connect to NBD server on {socket_path}: {e}") from e
            time.sleep(0.02)

    @classmethod
    def connect_uri(cls, uri: str) -> NbdTarget:
        """Any NBD server, by NBD URI (nbd://host:port/export, nbd+unix:///export?socket=PATH)."""
        handle = nbd.NBD()
        try:
            handle.connect_uri(uri)
        except nbd.Error as e:
            raise TargetWriteError(f"cannot connect to NBD server {uri}: {e}") from e
        return cls(handle, f"NBD server {uri}", fresh=False)

    def size(self) -> int:
        return self._handle.get_size()

    def read_only(self) -> bool:
        return bool(self._handle.is_read_only())

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), MAX_REQUEST):
            try:
                self._handle.pwrite(view[start:start + MAX_REQUEST], offset + start)
            except nbd.Error as e:
                raise TargetWriteError(f"writing to {self._description} failed: {e}") from e

    def zero_at(self, offset: int, length: int) -> None:
        if self._fresh:
            return
        # Without NBD_CMD_FLAG_NO_HOLE the server may punch holes: zeros cost no space.
        end = offset + length
        for start in range(offset, end, MAX_ZERO_REQUEST):
            try:
                self._handle.zero(min(MAX_ZERO_REQUEST, end - start), start)
            except nbd.Error as e:
                raise TargetWriteError(f"writing zeros to {self._description} failed: {e}") from e

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            return b"".join(self._handle.pread(min(MAX_REQUEST, offset + length - start), start)
                            for start in range(offset, offset + length, MAX_REQUEST))
        except nbd.Error as e:
            raise TargetWriteError(f"reading back from {self._description} failed: {e}") from e

    def finish(self) -> None:
        """Flush the writes to stable storage and disconnect."""
        try:
            self._handle.flush()
            self._handle.shutdown()
        except nbd.Error as e:
            raise TargetWriteError(f"finishing writes to {self._description} failed: {e}") from e

    def abort(self) -> None:
        """Drop the connection. Safe after a failed finish(): shutting down a dead handle is ignored."""
        with suppress(nbd.Error):
            self._handle.shutdown(nbd.SHUTDOWN_ABANDON_PENDING)


class QemuNbdServer:
    """qemu-nbd serving one image, writable, to one client with up to `clients` connections."""

    def __init__(self, image: Path | str, fmt: str, timeout: float = 10.0, clients: int = 1,
                 cache: str = "writeback") -> None:
        """image: a file or device, or (a str) a QEMU filename of a network image, e.g. rbd:pool/img:conf=PATH.
        cache: qemu-nbd's --cache mode.

        qemu-nbd exits when its last connection closes, so a client opens all of its
        connections before it closes any."""
        # Absolute, so that qemu never reads a relative "name:with:colons" as a protocol prefix.
        if isinstance(image, Path):
            image = image.absolute()
        self.image = image
        self._dir = Path(tempfile.mkdtemp(prefix="cairn-nbd-"))
        self._holding = Holding(f"qemu-nbd writing {image}")
        self._holding.remove(self._dir)
        self.socket = self._dir / "nbd.sock"
        self._log = self._dir / "qemu-nbd.log"
        command = [
            "qemu-nbd",
            f"--format={fmt}",
            f"--cache={cache}",
            "--discard=unmap",
            f"--shared={clients}",
            f"--socket={self.socket}",
            str(image),
        ]
        with open(self._log, "wb") as log:
            self._process = self._holding.spawn(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self._wait_for_socket(timeout)

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for the server to exit after its client disconnected."""
        try:
            returncode = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TargetWriteError(f"qemu-nbd serving {self.image} did not exit within {timeout:.0f}s") from None
        if returncode != 0:
            message = f"qemu-nbd serving {self.image} exited with status {returncode}: {self._output()}"
            self._remove_dir()
            raise TargetWriteError(message)
        self._remove_dir()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._remove_dir()

    def _wait_for_socket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self._process.poll() is not None:
                message = f"qemu-nbd could not serve {self.image}: {self._output()}"
                self._remove_dir()
                raise TargetWriteError(message)
            if time.monotonic() > deadline:
                self.kill()
                raise TargetWriteError(f"qemu-nbd did not create {self.socket} within {timeout:.0f}s")
            time.sleep(0.01)

    def _output(self) -> str:
        return self._log.read_text(errors="replace").strip() or "no output"

    def _remove_dir(self) -> None:
        """The server has exited: its directory and record go."""
        shutil.rmtree(self._dir, ignore_errors=True)
        self._holding.close()
