"""Backing up a VM that Cairn's agent runs on an ssh host, incremental from its last backup.

Everything crosses the SSH connection: the agent's commands (paramiko), and QEMU's QMP monitor
and NBD exports (unix sockets on the host, forwarded here, transports/tunnel.py). The freezing
transaction and the checkpoint bitmaps are the same as for a local VM (transports/live.py):
the bitmap the last good backup made is the base if QEMU still trusts it, else the disk is read
in full and the backup says why.
"""
from __future__ import annotations

import asyncio
import posixpath
from contextlib import ExitStack
from pathlib import Path

from appliance.errors import ConflictError
from appliance.hosts.service import HostCommandError, HostService, host_errors
from dedup import BackupManifest
from transports.errors import ExportError
from transports.live import exported
from transports.points import Checkpoint
from transports.remote_fleece import RemoteFleeceExport
from transports.tunnel import SocketForward
from vmm import QMPSession, VMSpec
from vmm.hosts import ACTIVE_STATES
from vmm.remote import RemoteHost

from .host import HostBackups, backup_vm_name
from .options import Progress
from .records import BackupRecord
from .service import BackupResult


class RemoteBackupService:
    def __init__(self, backups: HostBackups, hosts: HostService):
        self.backups = backups
        self.hosts = hosts

    def create(self, host: str, vm: str, full: bool = False, progress: Progress | None = None) -> BackupResult:
        """Back up a running VM of an ssh host; its backups are listed as `<vm>@<host>`."""
        name = backup_vm_name(host, vm)
        remote = self.hosts.remote(host)
        with host_errors():
            status = remote.status(vm)
        if status["state"] not in ACTIVE_STATES:
            raise ConflictError(f"VM {vm} on host {host} is {status['state']}: VMs of ssh hosts are backed up "
                                "while they run")
        spec = VMSpec.from_dict(status["spec"])

        def body(rec: BackupRecord, parent: BackupManifest | None, since: str | None) -> BackupResult:
            bases = {d.name: Checkpoint(since, d.path) if since else None for d in spec.disks}
            try:
                with host_errors(), SocketForward(remote.target.ssh_args(), status["qmp_socket"], "qmp.sock") as qmp:
                    return asyncio.run(self._read(remote, qmp.local, spec, rec, parent, bases, progress))
            except ExportError as e:
                raise HostCommandError(str(e)) from e

        return self.backups.run(name, full, body)

    async def _read(self, remote: RemoteHost, qmp_socket: Path, spec: VMSpec, rec: BackupRecord,
                    parent: BackupManifest | None, bases: dict[str, Checkpoint | None],
                    progress: Progress | None) -> BackupResult:
        export = RemoteFleeceExport(remote, remote.target.ssh_args(), posixpath.join(remote.base, "scratch", rec.id),
                                    [d.name for d in spec.disks], rec.new_checkpoint, bases)
        with ExitStack() as unpublished:
            async with exported(export, lambda: QMPSession(qmp_socket)) as points:
                session, sealed = await asyncio.to_thread(self.backups.seal, unpublished, rec, parent, points,
                                                          export.notes, progress, spec.to_dict())
            manifest = await asyncio.to_thread(session.publish, sealed)
        return BackupResult(manifest, list(manifest.notes), points)
