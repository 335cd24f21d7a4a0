"""Serve one disk of a backup over NBD, read-only, with nbdkit and restore/nbdkit_plugin.py.

nbdkit runs as a daemon (it outlives the process that started it: an instant
restore's VM keeps reading from it) on a unix socket; its pidfile tells a later
process which nbdkit to stop, and the socket path in its command line proves
the pid was not reused.
"""

from __future__ import annotations

import os
import signal
import site
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import RestoreError

PLUGIN = Path(__file__).with_name("nbdkit_plugin.py")
# Where the plugin finds Cairn's packages and their dependencies inside nbdkit's Python.
_PYTHONPATH = os.pathsep.join([str(PLUGIN.parent.parent), *site.getsitepackages()])


class ExportError(RestoreError):
    """nbdkit could not serve the backup."""


@dataclass(frozen=True)
class BackupExport:
    socket: Path
    pidfile: Path

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    @classmethod
    def start(cls, store: str, backup_id: str, disk: str, socket: Path, partition: int | None = None,
              timeout: float = 60.0) -> BackupExport:
        """Serve the disk, or one partition of it (MBR or GPT, numbered from 1), of a backup in
        the store at `store` (a directory or URL) on `socket` (whose directory must exist);
        return once it is listening."""
        pidfile = socket.with_suffix(".pid")
        log = socket.with_suffix(".log")
        command = ["nbdkit", "--readonly", "--unix", str(socket), "--pidfile", str(pidfile),
                   *(["--filter=partition"] if partition is not None else []),
                   "python", str(PLUGIN), f"store={store}", f"backup={backup_id}", f"disk={disk}",
                   *([f"partition={partition}"] if partition is not None else [])]
        with open(log, "wb") as out:
            # nbdkit forks into the background once it listens; the parent's status says if it got there.
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=timeout,
                                    env={**os.environ, "PYTHONPATH": _PYTHONPATH}, check=False)
        if result.returncode != 0:
            raise ExportError(f"nbdkit could not serve backup {backup_id} disk {disk}: "
                              f"{log.read_text(errors='replace').strip()}")
        return cls(socket, pidfile)

    def pid(self) -> int | None:
        """nbdkit's pid while it runs (checked against its command line)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if os.fsencode(self.socket) in argv else None

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
        for path in (self.socket, self.pidfile):
            path.unlink(missing_ok=True)
