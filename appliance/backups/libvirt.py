"""Backing up a domain of a libvirt host into the store, incremental from its last backup.

The base of an incremental is the checkpoint the last good backup made; libvirt keeps it in the
domain's metadata, and if it is gone the backup reads in full and says why. A failed backup
leaves the previous checkpoint in place (transports/libvirt_backup.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from appliance.errors import ConflictError
from appliance.hosts.service import HostCommandError, HostService, HostView, host_errors
from dedup import BackupManifest
from transports.errors import ExportError
from transports.libvirt_backup import Forward, LibvirtPullExport
from transports.tunnel import SocketForward
from vmm.hosts import ACTIVE_STATES
from vmm.remote import SshTarget

from .host import HostBackups, backup_vm_name
from .options import Progress
from .records import BackupRecord
from .service import BackupResult


def export_place(view: HostView, scratch_root: Path, backup_id: str) -> tuple[str, Forward | None]:
    """Where on the libvirt host the export's socket and scratch files go, and how its socket is
    reached from here: this machine's libvirtd works in the appliance's scratch directory; a
    qemu+ssh:// host in its `scratch_dir`, read through an SSH forward (verified against the
    host's `known_hosts`; the key is the URI's `keyfile`)."""
    parts = urlsplit(view.uri)
    if not parts.hostname:
        return str(scratch_root / backup_id), None
    if not parts.scheme.endswith("+ssh"):
        raise HostCommandError(f"host {view.name}: a remote libvirt host's backup is read through SSH; "
                               "register it with a qemu+ssh:// URI")
    if "scratch_dir" not in view.options:
        raise HostCommandError(f"host {view.name} has no scratch_dir: a directory on it that its QEMU can "
                               "write to, for the backup's socket and scratch files")
    keyfile = parse_qs(parts.query).get("keyfile", [None])[0]
    target = SshTarget(parts.hostname, parts.port or 22, parts.username or "root", keyfile,
                       view.options.get("known_hosts"))
    return view.options["scratch_dir"], lambda socket: SocketForward(target.ssh_args(), socket, "nbd.sock").open()


class LibvirtBackupService:
    def __init__(self, backups: HostBackups, hosts: HostService):
        self.backups = backups
        self.hosts = hosts

    def create(self, host: str, domain: str, full: bool = False, progress: Progress | None = None) -> BackupResult:
        """Back up a running domain; its backups are listed as `<domain>@<host>`."""
        vm = backup_vm_name(host, domain)
        info = self.hosts.vm(host, domain)
        if info.state not in ACTIVE_STATES:
            raise ConflictError(f"domain {domain} on host {host} is {info.state}: libvirt backs up running "
                                "domains only")

        def body(rec: BackupRecord, parent: BackupManifest | None, since: str | None) -> BackupResult:
            workdir = self.backups.settings.scratch_dir / rec.id
            directory, forward = export_place(self.hosts.get(host), self.backups.settings.scratch_dir, rec.id)
            try:
                with host_errors(), self.hosts.libvirt(host).domain(domain) as dom:
                    export = LibvirtPullExport(dom, rec.checkpoint, since, directory, forward)
                    try:
                        points = export.open()
                        result = self.backups.ingest(rec, parent, points, export.notes, progress, definition={})
                    except ExportError as e:
                        export.close(success=False)
                        raise HostCommandError(str(e)) from e
                    except BaseException:
                        export.close(success=False)
                        raise
                    export.close(success=True)
                    return result
            finally:
                shutil.rmtree(workdir, ignore_errors=True)

        return self.backups.run(vm, full, body)
