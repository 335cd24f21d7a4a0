"""SSHFS push target: the backup side's directory, mounted with sshfs on the host running the
VM; QEMU writes the backup there as a plain file, and the backup side reads it locally.

The backup side is the SSH server: the directory QEMU sees through the mount is the one the
backup side creates the target images in and ingests them from.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import Holding

from .errors import ExportError
from .push import new_target_image

MOUNT_TIMEOUT = 30.0
UNMOUNT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SshfsEndpoint:
    """How the host running the VM reaches the backup side's directory over SSH."""

    host: str
    port: int
    user: str
    directory: Path            # on the backup side (this process reads the targets there)
    identity_file: Path        # the VM host's private key
    known_hosts: Path          # must name the backup side's host key: no trust on first use

    def ssh_options(self) -> list[str]:
        return ["-o", f"port={self.port}", "-o", f"IdentityFile={self.identity_file}",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]


class SshfsMount:
    """`endpoint.directory` mounted on a fresh local directory until unmount().

    sshfs runs in the foreground as a helper of `holding` (procs): it dies with this process,
    and the next start's sweep unmounts what it leaves (a dead FUSE mount stays until then)."""

    def __init__(self, endpoint: SshfsEndpoint, holding: Holding):
        self.path = Path(tempfile.mkdtemp(prefix="cairn-sshfs-"))
        holding.remove(self.path)
        remote = f"{endpoint.user}@{endpoint.host}:{endpoint.directory}"
        # sshfs writes its complaints here for as long as the mount lives (a pipe nobody reads
        # would fill and stall it); _stop() reads and closes it: no `with` can span that.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self._sshfs = holding.spawn(["sshfs", "-f", *endpoint.ssh_options(), remote, str(self.path)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._errors)
        holding.unmount(self.path)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.path):
            # A failure to connect or authenticate is sshfs's exit.
            if self._sshfs.poll() is not None or time.monotonic() > deadline:
                reason = self._stop() or f"not mounted within {MOUNT_TIMEOUT:g}s"
                self.path.rmdir()
                raise ExportError(f"cannot mount {remote} with sshfs: {reason}")
            time.sleep(0.05)

    def unmount(self) -> None:
        done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ExportError(f"cannot unmount {self.path}: {done.stderr.strip()}")
        self._stop()
        self.path.rmdir()

    def _stop(self) -> str:
        """Wait for sshfs to end (it does once unmounted), killing it if it does not; return what it said."""
        try:
            self._sshfs.wait(UNMOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._sshfs.kill()
            self._sshfs.wait()
        self._errors.seek(0)
        said = self._errors.read().decode(errors="replace").strip()
        self._errors.close()
        return said


class SshfsPushTarget:
    """Targets in `endpoint.directory/<name>/`, which QEMU opens through the sshfs mount."""

    def __init__(self, endpoint: SshfsEndpoint, name: str):
        self.local = endpoint.directory / name
        self.local.mkdir(parents=True)
        self._holding = Holding(f"sshfs push targets in {self.local}")
        self._holding.remove(self.local)
        try:
            self.mount = SshfsMount(endpoint, self._holding)
        except ExportError:
            self.local.rmdir()
            self._holding.close()
            raise
        self.remote = self.mount.path / name

    def create(self, disk: str, size: int) -> dict[str, Any]:
        new_target_image(self.local / f"{disk}.qcow2", size)
        return {"driver": "qcow2", "file": {"driver": "file", "filename": str(self.remote / f"{disk}.qcow2")}}

    def released(self, disk: str) -> Path:
        # QEMU flushed and closed the file; sshfs does not return from that before the server has it.
        return self.local / f"{disk}.qcow2"

    def close(self) -> None:
        try:
            self.mount.unmount()
        finally:
            shutil.rmtree(self.local, ignore_errors=True)
        self._holding.close()
