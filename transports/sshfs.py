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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError
from .push import new_target_image

MOUNT_TIMEOUT = 30.0


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
    """`endpoint.directory` mounted on a fresh local directory until unmount()."""

    def __init__(self, endpoint: SshfsEndpoint):
        self.path = Path(tempfile.mkdtemp(prefix="cairn-sshfs-"))
        remote = f"{endpoint.user}@{endpoint.host}:{endpoint.directory}"
        try:
            # sshfs returns once the connection stands and the mount is in place (it then
            # runs on in the background); a failure to connect is its exit status.
            done = subprocess.run(["sshfs", *endpoint.ssh_options(), remote, str(self.path)],
                                  capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.path.rmdir()
            raise ExportError(f"cannot mount {remote} with sshfs: {e}") from e
        if done.returncode != 0 or not os.path.ismount(self.path):
            self.path.rmdir()
            raise ExportError(f"cannot mount {remote} with sshfs: {done.stderr.strip() or 'not mounted'}")

    def unmount(self) -> None:
        done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ExportError(f"cannot unmount {self.path}: {done.stderr.strip()}")
        self.path.rmdir()


class SshfsPushTarget:
    """Targets in `endpoint.directory/<name>/`, which QEMU opens through the sshfs mount."""

    def __init__(self, endpoint: SshfsEndpoint, name: str):
        self.local = endpoint.directory / name
        self.local.mkdir(parents=True)
        try:
            self.mount = SshfsMount(endpoint)
        except ExportError:
            self.local.rmdir()
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
