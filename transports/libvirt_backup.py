"""A libvirt domain's disks at one instant, through libvirt's pull-mode backup API.

`virDomainBackupBegin` does in one call what `fleece` does over QMP: it freezes every disk into
a scratch overlay, starts a checkpoint (a persistent bitmap libvirt names after it) and exports
the frozen disks over NBD on a unix socket; for an incremental, each export also publishes the
changes since an earlier checkpoint as `qemu:dirty-bitmap:<exportbitmap>`. The result is the
same `DiskPoint`s the other exports give, so ingest does not know the difference.

Checkpoints stay libvirt's (the domain's metadata, its bitmaps); Cairn names its own
`cairn-<backup id>` and keeps one per domain: after a good backup the previous one is deleted,
after a failed one the new one is, and libvirt merges a deleted checkpoint's bitmap into its
parent, so the remaining one still covers every write since it was made.
"""
from __future__ import annotations

import os
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from vmm.hosts import HostDisk
from vmm.libvirt_host import domain_disks

from .errors import ExportError
from .points import CHECKPOINT_PREFIX, DiskPoint
from .tunnel import SocketForward

# Opens a way to the libvirt host's socket from here: (socket path there) -> an open forward.
Forward = Callable[[str], SocketForward]



def _element(tag: str, children: list[ET.Element] = (), **attrs: str) -> ET.Element:
    e = ET.Element(tag, attrs)
    e.extend(children)
    return e


class LibvirtPullExport:
    """`since` is the checkpoint the last good backup made (None: read in full); if the domain no
    longer has it, the disks are read in full and `fallback_reason` says why.

    `directory`, on the libvirt host, gets the NBD socket and the scratch overlays (named after
    the checkpoint); the domain's QEMU must be able to write there. Without `forward` the host
    is this machine and the directory is made here; with it, the socket is read through it."""

    def __init__(self, dom: libvirt.virDomain, checkpoint: str, since: str | None, directory: str,
                 forward: Forward | None = None):
        self.dom = dom
        self.checkpoint = checkpoint
        self.since = since
        self.directory = directory
        self.forward = forward
        self.notes: list[str] = []
        self._begun = False
        self._forward: SocketForward | None = None

    @property
    def socket(self) -> str:
        return posixpath.join(self.directory, f"{self.checkpoint}.sock")

    def open(self) -> list[DiskPoint]:
        if not self.dom.isActive():
            raise ExportError(f"libvirt domain {self.dom.name()} is not running: libvirt backs up running domains only")
        if len(os.fsencode(self.socket)) >= 108:   # sun_path, with its NUL
            raise ExportError(f"the NBD socket path {self.socket} is too long for a unix socket")
        disks = self._disks()
        self._end_stale_job()
        fallback = self._check_since()
        self._drop_orphans()
        if self.forward is None:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
        try:
            self.dom.backupBegin(self._backup_xml(disks), self._checkpoint_xml(disks), 0)
        except libvirt.libvirtError as e:
            raise ExportError(f"libvirt refused the backup of {self.dom.name()}: {e.get_error_message()}") from e
        self._begun = True
        socket = self.socket
        if self.forward is not None:
            self._forward = self.forward(self.socket)
            socket = str(self._forward.local)
        exports = self._exports()
        points = []
        for d in disks:
            name, bitmap = exports[d.target]
            points.append(DiskPoint(d.target, self.dom.blockInfo(d.target)[0], f"nbd+unix:///{name}?socket={socket}",
                                    since=bitmap if self.since else None, checkpoint=self.checkpoint,
                                    fallback_reason=fallback, checkpoint_file=d.path))
        return points

    def close(self, success: bool) -> None:
        """End the job; keep exactly one Cairn checkpoint: the new one if the backup is good,
        else the one it started from."""
        if not self._begun:
            return
        if self._forward is not None:
            self._forward.close()
            self._forward = None
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:   # the job already ended
                raise
        self._delete_checkpoint(self.since if success else self.checkpoint)

    def _disks(self) -> list[HostDisk]:
        disks = domain_disks(self.dom.XMLDesc(0))
        for d in disks:
            if d.format != "qcow2":
                raise ExportError(f"disk {d.target} of libvirt domain {self.dom.name()} is {d.format}: "
                                  "libvirt keeps checkpoints only in qcow2 images")
        if not disks:
            raise ExportError(f"libvirt domain {self.dom.name()} has no disk to back up")
        return disks

    def _end_stale_job(self) -> None:
        """A backup job whose socket is named like ours is an interrupted Cairn backup's: libvirt
        keeps it (and its export) until someone ends it. Anyone else's is left alone."""
        try:
            server = ET.fromstring(self.dom.backupGetXMLDesc(0)).find("server")
        except libvirt.libvirtError:
            return   # no backup job
        socket = posixpath.basename(server.get("socket", "")) if server is not None else ""
        if not (socket.startswith(CHECKPOINT_PREFIX) and socket.endswith(".sock")):
            raise ExportError(f"libvirt domain {self.dom.name()} already has a backup job that is not Cairn's")
        self.dom.abortJob()
        self.notes.append(f"ended the backup job of an interrupted backup (socket {socket})")

    def _checkpoint_names(self) -> list[str]:
        return [c.getName() for c in self.dom.listAllCheckpoints(0)]

    def _check_since(self) -> str | None:
        if self.since is None or self.since in self._checkpoint_names():
            return None
        reason = (f"checkpoint {self.since} is missing from libvirt domain {self.dom.name()}: "
                  "read in full")
        self.since = None
        return reason

    def _drop_orphans(self) -> None:
        """Checkpoints of Cairn's other than the base were left by an interrupted backup; deleting
        one merges its bitmap into its parent, so the base keeps covering everything."""
        orphans = [n for n in self._checkpoint_names() if n.startswith(CHECKPOINT_PREFIX) and n != self.since]
        for name in orphans:
            self._delete_checkpoint(name)
        if orphans:
            self.notes.append(f"deleted checkpoints of an interrupted backup: {', '.join(sorted(orphans))}")

    def _delete_checkpoint(self, name: str | None) -> None:
        if name is None:
            return
        try:
            self.dom.checkpointLookupByName(name, 0).delete(0)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise

    def _backup_xml(self, disks: list[HostDisk]) -> str:
        root = _element("domainbackup", mode="pull")
        if self.since:
            root.append(_element("incremental"))
            root[-1].text = self.since
        root.append(_element("server", transport="unix", socket=self.socket))
        root.append(_element("disks", [
            _element("disk", [_element("scratch", file=posixpath.join(self.directory,
                                                                          f"{self.checkpoint}-{d.target}.qcow2"))],
                     name=d.target, backup="yes", type="file") for d in disks]))
        return ET.tostring(root, encoding="unicode")

    def _checkpoint_xml(self, disks: list[HostDisk]) -> str:
        name = _element("name")
        name.text = self.checkpoint
        root = _element("domaincheckpoint", [name, _element("disks", [
            _element("disk", name=d.target, checkpoint="bitmap") for d in disks])])
        return ET.tostring(root, encoding="unicode")

    def _exports(self) -> dict[str, tuple[str, str | None]]:
        """disk -> (NBD export name, the dirty bitmap it publishes) as libvirt chose them."""
        desc = ET.fromstring(self.dom.backupGetXMLDesc(0))
        return {d.get("name"): (d.get("exportname") or d.get("name"), d.get("exportbitmap"))
                for d in desc.iterfind("./disks/disk[@backup='yes']")}
