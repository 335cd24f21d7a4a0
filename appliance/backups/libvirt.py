"""Backing up a domain of a libvirt host into the store, incremental from its last backup.

The checkpoint ledger proposes each disk's base, as for Cairn's own VMs; libvirt's checkpoint
of that name is proven disk by disk, and redefined from the ledger if libvirt lost it
(transports/libvirt_checkpoints.py). A disk whose base cannot be proven is read in full and
the backup says why; so is every disk libvirt cannot checkpoint (raw images, read-only disks).
A failed backup leaves the previous checkpoint in place (transports/libvirt_backup.py).

Each backup keeps the domain's definition (its inactive XML, as `virsh dumpxml --inactive`
gives it) and, per disk, what it is and how it was read, in the manifest's `vm_definition`:

    {"libvirt": {"name": ..., "uuid": ..., "xml": "<domain ...>",
                 "disks": [{"target": "vda", "kind": "file", "format": "qcow2", "path": ..., ...,
                            "read": "incremental" | "full" | "left out", "why": str | None}]}}

which is what a restore into libvirt defines again (appliance/restores/libvirt.py).
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

import libvirt

from appliance.errors import ConflictError
from appliance.hosts.service import HostCommandError, HostService, HostView, host_errors
from dedup import BackupManifest
from transports.errors import ExportError
from transports.libvirt_backup import Forward, LibvirtPullExport, SameHost
from transports.points import DiskPoint
from transports.tunnel import SocketForward
from vmm.hosts import ACTIVE_STATES
from vmm.libvirt_xml import domain_disks
from vmm.remote import SshTarget

from . import checkpoints
from .host import HostBackups, backup_vm_name
from .options import DEFAULT_FULL_EVERY, Progress
from .records import BackupRecord
from .selection import Choice, DiskSelection
from .service import BackupResult

DEFINITION_KEY = "libvirt"


def export_place(view: HostView) -> tuple[str | None, Forward]:
    """Where on the libvirt host the export's socket and scratch files go (None: the domain's
    own directory, which libvirt's QEMU may write), and how its socket is reached from here:
    a libvirtd on this machine is read in place; a qemu+ssh:// host through an SSH forward
    (verified against the host's `known_hosts`; the key is the URI's `keyfile`)."""
    parts = urlsplit(view.uri)
    directory = view.options.get("scratch_dir")
    if not parts.hostname:
        return directory, SameHost(view.options.get("libvirt_dir", SameHost.lib_dir))
    if not parts.scheme.endswith("+ssh"):
        raise HostCommandError(f"host {view.name}: a remote libvirt host's backup is read through SSH; "
                               "register it with a qemu+ssh:// URI")
    keyfile = parse_qs(parts.query).get("keyfile", [None])[0]
    target = SshTarget(parts.hostname, parts.port or 22, parts.username or "root", keyfile,
                       view.options.get("known_hosts"))
    return directory, lambda socket: SocketForward(target.ssh_args(), socket, "nbd.sock").open()


def definition(dom: libvirt.virDomain, choice: Choice, points: list[DiskPoint]) -> dict[str, Any]:
    """What the manifest keeps of the domain (see the module's docstring): its persistent
    definition, and the disks as they ran (a disk attached live is read, yet not defined)."""
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    read = {p.disk: p for p in points}
    disks = []
    for disk in domain_disks(dom.XMLDesc(0)):
        point = read.get(disk.target)
        if point is None:
            how, why = "left out", choice.left_out.get(disk.target)
        else:
            how, why = ("incremental", None) if point.since else ("full", point.fallback_reason)
        disks.append({**asdict(disk), "read": how, "why": why})
    return {DEFINITION_KEY: {"name": dom.name(), "uuid": dom.UUIDString(), "xml": xml, "disks": disks}}


class LibvirtBackupService:
    def __init__(self, backups: HostBackups, hosts: HostService):
        self.backups = backups
        self.hosts = hosts

    def create(self, host: str, domain: str, full: bool = False, progress: Progress | None = None,
               selection: DiskSelection | None = None,
               full_every: int = DEFAULT_FULL_EVERY) -> BackupResult:
        """Back up a running domain; its backups are listed as `<domain>@<host>`. Every disk
        that holds data is read unless `selection` says otherwise."""
        vm = backup_vm_name(host, domain)
        info = self.hosts.vm(host, domain)
        if info.state not in ACTIVE_STATES:
            raise ConflictError(f"domain {domain} on host {host} is {info.state}: libvirt backs up running "
                                "domains only")
        choice = (selection or DiskSelection()).choose(f"domain {domain}", info.disks)

        def body(rec: BackupRecord, parent: BackupManifest | None, _since: str | None) -> BackupResult:
            with self.backups.catalog() as s:
                ledger = checkpoints.current(s, vm)
            bases = checkpoints.plan_bases(choice.names, parent, ledger, full_every)
            directory, forward = export_place(self.hosts.get(host))
            with ExitStack() as unpublished, host_errors(), self.hosts.libvirt(host).domain(domain) as dom:
                export = LibvirtPullExport(dom, choice.names, rec.new_checkpoint, bases.known, set(bases.full),
                                           directory, forward)
                try:
                    points = export.open()
                    # A disk libvirt cannot checkpoint has its own reason; "no checkpoint" adds nothing.
                    ledger_notes = [why for disk, why in bases.full.items() if why and export.plans[disk].bitmap]
                    session, sealed = self.backups.seal(unpublished, rec, parent, points,
                                                        choice.notes + ledger_notes + export.notes, progress,
                                                        definition(dom, choice, points))
                except ExportError as e:
                    export.close(success=False)
                    raise HostCommandError(str(e)) from e
                except BaseException:
                    export.close(success=False)
                    raise
                export.close(success=True)
                manifest = session.publish(sealed)
                return BackupResult(manifest, list(manifest.notes), points)

        return self.backups.run(vm, full, body)
