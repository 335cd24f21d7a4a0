"""A unix socket of a remote host, reachable here: OpenSSH's streamlocal forwarding.

`ssh -N -L LOCAL.sock:REMOTE.sock` carries each connection to the local socket over the SSH
connection to the remote one, so QEMU's QMP monitor and NBD exports on another host are read
as if they were local, encrypted and authenticated by SSH, with no port opened on the host.
(paramiko has no streamlocal forwarding, hence the OpenSSH client.) The ssh process is a
helper (procs): it dies with the process that opened the forward.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from procs import Holding

from .errors import ExportError

OPEN_TIMEOUT = 30.0


class SocketForward:
    """`ssh_args` are the OpenSSH options and destination (vmm.remote.SshTarget.ssh_args())."""

    def __init__(self, ssh_args: list[str], remote: str, name: str = "forward.sock"):
        self.remote = remote
        # Socket paths must fit in 107 bytes: keep the local one short, under /tmp.
        self._dir = Path(tempfile.mkdtemp(prefix="cairn-fwd-"))
        self.local = self._dir / name
        self._log = self._dir / "ssh.log"
        self._cmd = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                     "-o", "ServerAliveInterval=15", "-L", f"{self.local}:{remote}", *ssh_args]
        self._proc: subprocess.Popen[bytes] | None = None
        self._holding = Holding(f"SSH forward of {remote}")
        self._holding.remove(self._dir)

    def open(self) -> Self:
        with self._log.open("wb") as log:
            self._proc = self._holding.spawn(self._cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=log)
        deadline = time.monotonic() + OPEN_TIMEOUT
        while not self.local.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                reason = self._log.read_text(errors="replace").strip() or "no local socket appeared"
                self.close()
                raise ExportError(f"cannot forward {self.remote} over SSH: {reason}")
            time.sleep(0.05)
        return self

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)
        self._holding.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
