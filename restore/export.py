"""Serve one disk of a backup over NBD, read-only, with nbdkit and restore/nbdkit_plugin.py.

nbdkit runs in the foreground as a helper (procs) on a unix socket. By default it dies with
the process that started it (file-level restore, boot tests). An instant restore's VM keeps
reading from it after that process is gone: started with outlives_owner, it forks into the
background as nbdkit does by default (one kept in the foreground stops serving once the
process that started it exits), is handed over to the VM's QEMU and swept once that is gone. Its pidfile tells a later process which nbdkit
to stop, and the socket path in its command line proves the pid was not reused.
"""

from __future__ import annotations

import hashlib
import os
import signal
import site
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import Holding

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
    # The nbdkit this process started (None for one found again by its pidfile): kept to reap it.
    process: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    @property
    def record(self) -> str:
        return _record_key(self.socket)

    @classmethod
    def start(cls, store: str, backup_id: str, disk: str, socket: Path, partition: int | None = None,
              timeout: float = 60.0, *, outlives_owner: bool = False) -> BackupExport:
        """Serve the disk, or one partition of it (MBR or GPT, numbered from 1), of a backup in
        the store at `store` (a directory or URL) on `socket` (whose directory must exist);
        return once it is listening. With outlives_owner it goes on after this process ends,
        until hand_over()'s process ends or stop()."""
        pidfile = socket.with_suffix(".pid")
        log = socket.with_suffix(".log")
        pidfile.unlink(missing_ok=True)
        command = ["nbdkit", *([] if outlives_owner else ["--foreground"]), "--readonly", "--unix", str(socket),
                   "--pidfile", str(pidfile),
                   *(["--filter=partition"] if partition is not None else []),
                   "python", str(PLUGIN), f"store={store}", f"backup={backup_id}", f"disk={disk}",
                   *([f"partition={partition}"] if partition is not None else [])]
        holding = Holding(f"nbdkit serving backup {backup_id} disk {disk} on {socket}", key=_record_key(socket))
        with open(log, "wb") as out:
            process = holding.spawn(command, outlives_owner=outlives_owner, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=out, env={**os.environ, "PYTHONPATH": _PYTHONPATH})
        # One in the background is found by its pidfile, like an export another process started.
        export = cls(socket, pidfile, None if outlives_owner else process)
        deadline = time.monotonic() + timeout
        while not pidfile.exists():   # nbdkit writes it once it accepts connections
            # In the background, the process started exits once it has forked the server.
            ended = process.poll()
            if (ended is not None and (ended != 0 or not outlives_owner)) or time.monotonic() > deadline:
                export.stop()
                raise ExportError(f"nbdkit could not serve backup {backup_id} disk {disk}: "
                                  f"{log.read_text(errors='replace').strip() or 'not listening in time'}")
            time.sleep(0.02)
        if outlives_owner and (server := export.pid()) is not None:
            holding.adopt(server, command)
        for made in (socket, pidfile):
            holding.remove(made)
        return export

    def pid(self) -> int | None:
        """nbdkit's pid while it runs (checked against its command line)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if os.fsencode(self.socket) in argv else None

    def hand_over(self, pid: int) -> None:
        """Serve process `pid` (the VM reading from it) from now on: nbdkit is swept once it is gone."""
        if (held := Holding.find(self.record)) is not None:
            held.hand_over(pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        elif (pid := self.pid()) is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.pid() is not None:
                os.kill(pid, signal.SIGKILL)
        for path in (self.socket, self.pidfile):
            path.unlink(missing_ok=True)
        if (held := Holding.find(self.record)) is not None:
            held.close()


def _record_key(socket: Path) -> str:
    """The key of an export's helper record: one per socket, whichever process started it."""
    return "nbdkit-" + hashlib.sha256(os.fsencode(socket.absolute())).hexdigest()[:16]
