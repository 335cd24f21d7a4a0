"""qemu-nbd serving one image file over a unix socket, and running qemu-img.

The backup side uses it both ways: read-only to publish a stopped VM's disks or a pushed
copy for ingest (with a frozen bitmap as `qemu:dirty-bitmap:NAME`), and writable as the
target a running QEMU pushes a backup into.

Each server is a helper of the export that starts it (procs): it dies with the Cairn process,
so a killed backup cannot leave a stopped VM's disk locked by a qemu-nbd nobody reads.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from procs import Holding

from .errors import ExportError

# Generous: the machine may be shared with busy guests. qemu-nbd takes seconds to exit on
# SIGTERM even when idle.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0
TERM_INTERVAL = 2.0


class QemuNbd:
    def __init__(self, image: str | Path, fmt: str, export: str, socket: Path, *, holding: Holding,
                 writable: bool = False, bitmap: str | None = None):
        """Start serving `image` as export `export`, a helper of `holding`; returns once the
        socket accepts clients."""
        self.image = str(image)
        # qemu-nbd writes its pid file once it listens and the export exists; the socket file
        # alone appears a moment before it listens (a client then gets "connection refused").
        ready = socket.with_suffix(".pid")
        for stale in (socket, ready):
            stale.unlink(missing_ok=True)
        cmd = ["qemu-nbd", "--persistent", "--format", fmt, "--export-name", export, "--socket", str(socket),
               "--pid-file", str(ready)]
        # Readers may open several connections; a writer must be the only one.
        cmd += ["--shared=1"] if writable else ["--read-only", "--shared=4"]
        if bitmap:
            cmd += ["--bitmap", bitmap]
        self._server = holding.spawn([*cmd, self.image], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.exists():
            if self._server.poll() is not None:
                _, errors = self._server.communicate()
                raise ExportError(f"qemu-nbd could not export {image}: {errors.decode().strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ExportError(f"qemu-nbd did not start for {image}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Close the image cleanly (SIGTERM): a writable one has its bitmaps and data on disk after.

        qemu-nbd drops a SIGTERM that arrives before its main loop runs (it has written its pid
        file by then), so the signal is repeated until it exits."""
        deadline = time.monotonic() + STOP_TIMEOUT
        try:
            while self._server.poll() is None:
                if time.monotonic() > deadline:
                    self._server.kill()
                    self._server.wait()
                    raise ExportError(f"qemu-nbd serving {self.image} did not exit within {STOP_TIMEOUT:g}s; "
                                      "killed, the image may not be complete")
                self._server.terminate()
                try:
                    self._server.wait(timeout=TERM_INTERVAL)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self._server.stderr is not None:  # the pipe start() asked for
                self._server.stderr.close()


# A QEMU that was just killed holds its images' locks a moment after it stops counting as
# running: the kernel frees its memory (which empties its /proc cmdline) before it closes its
# files. A locked image is tried again for this long before the lock is reported.
LOCK_WAIT = 5.0
_LOCK_REFUSED = re.compile(r'Failed to get (shared )?"\w+" lock')


def qemu_img(*args: str) -> str:
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        proc = subprocess.run(["qemu-img", *args], check=False, capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout
        if not _LOCK_REFUSED.search(proc.stderr) or time.monotonic() > deadline:
            raise ExportError(f"qemu-img {' '.join(args[:2])} failed: {proc.stderr.strip()}")
        time.sleep(0.1)
