"""A libvirt domain's disks at one instant, through libvirt's pull-mode backup API.

`virDomainBackupBegin` does in one call what `fleece` does over QMP: it freezes the disks into
scratch overlays, starts a checkpoint (a persistent bitmap libvirt names after it, in each
qcow2 disk) and exports the frozen disks over NBD on a unix socket; a disk read incrementally
also publishes its changes since an earlier checkpoint as `qemu:dirty-bitmap:<exportbitmap>`.
The result is the same `DiskPoint`s the other exports give, so ingest does not know the
difference.

How each disk is read:
- qcow2 (files, block devices or network disks holding qcow2, with or without a data file):
  its bitmap goes in the new checkpoint, and it is read incrementally from the previous one
  where that is proven intact (libvirt_checkpoints.py), else in full with the reason;
- raw and every other format: libvirt keeps checkpoints only in qcow2 images, so the disk is
  read in full each time, and the point says so. (libvirt 10.10 and later can put a qcow2
  overlay whose data file is the raw image in front of it, <source><dataStore>: the disk is
  then a qcow2 disk here. Debian 12 ships libvirt 9.0, which cannot.)
- read-only disks are read in full (no bitmap can be added to a read-only image).
Which disks are read at all is the caller's choice (appliance/backups/selection.py).

Where the export lives: the NBD socket is created by the domain's QEMU, which libvirt runs as
its own user (libvirt-qemu on Debian) under a DAC label and an AppArmor profile. The one
directory both let that QEMU write is the domain's own, /var/lib/libvirt/qemu/domain-<id>-
<name>: libvirt makes it owned by the QEMU user, and virt-aa-helper puts
`/var/lib/libvirt/qemu/domain-<id>-<first 20 characters of the name>/* rw` in the domain's
profile. The scratch overlays go beside the socket: libvirt creates, labels and removes them
itself. Ending the job (abortJob) removes them and the socket; libvirt removes the directory
when the domain stops. A backup that was killed leaves its job running: the next one ends it.

Checkpoints stay libvirt's (the domain's metadata, its bitmaps); Cairn names its own
`cairn-<backup id>` and keeps one per domain: after a good backup the previous one is deleted,
after a failed one the new one is. libvirt 9 keeps every checkpoint's bitmap recording, so the
one that remains covers every write since it was made.
"""
from __future__ import annotations

import os
import posixpath
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import libvirt

from vmm.hosts import HostDisk
from vmm.libvirt_xml import domain_disks

from . import libvirt_checkpoints as checkpoints
from .errors import ExportError
from .points import CHECKPOINT_PREFIX, Checkpoint, DiskPoint

# libvirt's state directory for the system instance (qemu:///system), as Debian builds it.
LIBVIRT_LIB_DIR = "/var/lib/libvirt"
# libvirt 10.10: raw images can be checkpointed behind a qcow2 overlay (<dataStore>).
DATA_STORE_VERSION = 10_010_000
JOB_END_TIMEOUT = 60.0


class Reach(Protocol):
    """A socket on the libvirt host, reachable here at `local` until closed."""
    local: Path

    def close(self) -> None: ...


# Opens a way to the libvirt host's socket from here: (socket path there) -> a reach.
Forward = Callable[[str], Reach]


@dataclass
class SameHost:
    """libvirtd runs on this machine: its sockets are read where they are, its /var/lib/libvirt
    being seen here at `lib_dir` (another path when Cairn runs in a container, for one)."""

    lib_dir: str = LIBVIRT_LIB_DIR

    def __call__(self, socket: str) -> Reach:
        if socket.startswith(LIBVIRT_LIB_DIR + "/"):
            socket = self.lib_dir + socket[len(LIBVIRT_LIB_DIR):]
        return _Here(Path(socket))


@dataclass
class _Here:
    local: Path

    def close(self) -> None:
        pass


def domain_directory(dom: libvirt.virDomain) -> str:
    """libvirt's own directory of a running domain: domain-<id>-<short name>, the short name
    being the first 20 characters of its name (virDomainDefGetShortName). The id is looked up
    afresh: a handle keeps the one its domain had when it was looked up."""
    running = dom.connect().lookupByUUIDString(dom.UUIDString())
    return posixpath.join(LIBVIRT_LIB_DIR, "qemu", f"domain-{running.ID()}-{dom.name()[:20]}")


@dataclass
class _DiskPlan:
    disk: HostDisk
    bitmap: bool                 # gets a bitmap in the new checkpoint
    since: str | None = None     # the checkpoint it is read incrementally from
    reason: str | None = None    # why it is read in full, where the backup must say


class LibvirtPullExport:
    """`disks` are the targets to read. `since` names, per disk, the checkpoint Cairn's ledger
    knows (None: read in full); it is proven against libvirt and the images before it is
    trusted. Disks in `full` are read in full whatever it says.

    `directory`, on the libvirt host, gets the NBD socket and the scratch overlays (None:
    the domain's own directory, see above); `forward` reaches the socket from here (None:
    libvirtd runs on this machine)."""

    def __init__(self, dom: libvirt.virDomain, disks: list[str], checkpoint: str,
                 since: dict[str, Checkpoint | None], full: Collection[str] = (), directory: str | None = None,
                 forward: Forward | None = None):
        self.dom = dom
        self.disks = disks
        self.checkpoint = checkpoint
        self.expected = dict(since)
        self.full = set(full)
        self.directory = directory
        self.forward = forward or SameHost()
        self.notes: list[str] = []   # what open() had to repair, for the backup's record
        self.plans: dict[str, _DiskPlan] = {}
        self._base: str | None = next((c.bitmap for c in since.values() if c), None)
        self._begun = False
        self._reach: Reach | None = None

    @property
    def socket(self) -> str:
        return posixpath.join(self._directory(), f"{self.checkpoint}.sock")

    def open(self) -> list[DiskPoint]:
        name = self.dom.name()
        if not self.dom.isActive():
            raise ExportError(f"libvirt domain {name} is not running: libvirt backs up running domains only")
        described = {d.target: d for d in domain_disks(self.dom.XMLDesc(0))}
        missing = [t for t in self.disks if t not in described]
        if missing:
            raise ExportError(f"libvirt domain {name} has no disk {', '.join(missing)}")
        if len(os.fsencode(self.socket)) >= 108:   # sun_path, with its NUL
            raise ExportError(f"the NBD socket path {self.socket} is too long for a unix socket: "
                              "give the host a shorter scratch_dir")
        self._end_stale_job()
        self.plans = {t: self._plan(described[t]) for t in self.disks}
        if self._base:
            self._prove_base(self._base, described)
        self._drop_orphans()
        bitmaps = [t for t, p in self.plans.items() if p.bitmap]
        try:
            self.dom.backupBegin(self._backup_xml(described),
                                 checkpoints.checkpoint_xml(self.checkpoint, bitmaps,
                                                            [t for t in described if t not in bitmaps])
                                 if bitmaps else None, 0)
        except libvirt.libvirtError as e:
            raise ExportError(f"libvirt refused the backup of {name}: {e.get_error_message()}") from e
        self._begun = True
        self._reach = self.forward(self.socket)
        exports = self._exports()
        points = []
        for target, plan in self.plans.items():
            export, bitmap = exports[target]
            if plan.since and not bitmap:
                raise ExportError(f"libvirt exported disk {target} of {name} without its changes since {plan.since}")
            points.append(DiskPoint(target, self.dom.blockInfo(target)[0],
                                    f"nbd+unix:///{export}?socket={self._reach.local}",
                                    since=bitmap if plan.since else None,
                                    checkpoint=self.checkpoint if plan.bitmap else None,
                                    fallback_reason=plan.reason, checkpoint_file=plan.disk.path))
        return points

    def close(self, success: bool) -> None:
        """End the job; keep exactly one Cairn checkpoint: the new one if the backup is good,
        else the one it started from."""
        if not self._begun:
            return
        if self._reach is not None:
            self._reach.close()
            self._reach = None
        self._end_job()
        doomed = self._base if success else self.checkpoint
        if doomed and (note := checkpoints.delete(self.dom, doomed)):
            self.notes.append(note)

    # -- which disks are read how -------------------------------------------------------------

    def _plan(self, disk: HostDisk) -> _DiskPlan:
        target = disk.target
        if disk.readonly:
            return _DiskPlan(disk, False, reason=f"{target}: read-only: no checkpoint can be kept in it; full read")
        if disk.format != "qcow2":
            return _DiskPlan(disk, False, reason=f"{target}: {disk.format} image: libvirt keeps checkpoints only in "
                                                 f"qcow2 images{self._data_store_hint()}; full read")
        known = self.expected.get(target)
        if known is None or target in self.full:
            return _DiskPlan(disk, True)
        on_chain = (disk.path, *disk.backing)
        if known.file not in on_chain:
            return _DiskPlan(disk, True, reason=f"{target}: checkpoint {known.bitmap} was made on {known.file}, and "
                                                f"the disk is now {disk.path}; full read")
        return _DiskPlan(disk, True, since=known.bitmap)

    def _data_store_hint(self) -> str:
        version = self.dom.connect().getLibVersion()
        if version >= DATA_STORE_VERSION:
            return (" (put a qcow2 overlay whose data file is the raw image, <source><dataStore>, in front of it "
                    "and it is checkpointed)")
        return (f" (libvirt {version // 1_000_000}.{version // 1000 % 1000} here; from 10.10 a qcow2 overlay whose "
                "data file is the raw image, <source><dataStore>, can be checkpointed)")

    def _prove_base(self, base: str, described: dict[str, HostDisk]) -> None:
        """Read incrementally only disks whose bitmap of the base checkpoint is proven intact;
        afterwards libvirt's checkpoint covers exactly the disks that hold its bitmap."""
        wanted = {t for t, p in self.plans.items() if p.since}
        if base in checkpoints.names(self.dom):
            intact, lost = checkpoints.intact_disks(self.dom, base)
            if lost and intact:
                intact, _failed = checkpoints.redefine(self.dom, base, sorted(intact))
                self.notes.append(f"checkpoint {base} narrowed to {', '.join(sorted(intact))}: its bitmap is gone "
                                  f"from {', '.join(sorted(lost))}")
            elif lost:
                checkpoints.delete(self.dom, base)
                self.notes.append(f"deleted checkpoint {base}: its bitmap is gone from every disk")
            why = {t: f"{t}: its bitmap of checkpoint {base} is missing or broken (was its image restored or "
                      "replaced?); full read" for t in wanted - intact}
        else:
            # Every qcow2 disk the ledger knows may hold the bitmap, read incrementally or not:
            # the redefinition takes them all, so the bitmaps leave with the checkpoint.
            holders = sorted(t for t, c in self.expected.items() if c and c.bitmap == base
                             and t in described and described[t].format == "qcow2")
            intact, failed = checkpoints.redefine(self.dom, base, holders)
            why = {t: f"{t}: libvirt had lost checkpoint {base}, and {failed.get(t, 'its bitmap is not there')}; "
                      "full read" for t in wanted - intact}
            if intact:
                self.notes.append(f"libvirt had lost checkpoint {base} (the domain was defined again, or moved): "
                                  f"redefined from Cairn's ledger, its bitmaps on {', '.join(sorted(intact))} "
                                  "proven intact")
        for target, reason in why.items():
            self.plans[target].since, self.plans[target].reason = None, reason
        if not intact:
            self._base = None   # nothing left to delete after a good backup

    def _end_job(self) -> None:
        """Abort the backup job and wait until libvirt has let it go: it ends once QEMU's copy
        jobs are cancelled, and only then removes the scratch files (the socket goes with the
        NBD server)."""
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:   # the job already ended
                raise
        deadline = time.monotonic() + JOB_END_TIMEOUT
        while True:
            try:
                self.dom.backupGetXMLDesc(0)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_BACKUP:
                    return
                raise
            if time.monotonic() > deadline:
                raise ExportError(f"the backup job of libvirt domain {self.dom.name()} did not end within "
                                  f"{JOB_END_TIMEOUT:g} s of being aborted")
            time.sleep(0.05)

    # -- leftovers of interrupted backups -----------------------------------------------------

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
        self._end_job()
        self.notes.append(f"ended the backup job of an interrupted backup (socket {socket})")

    def _drop_orphans(self) -> None:
        """Checkpoints of Cairn's other than the base were left by an interrupted backup (or
        belong to a base the ledger no longer trusts); their bitmaps go with them."""
        orphans = [n for n in checkpoints.cairns(self.dom) if n != self._base]
        for name in orphans:
            if note := checkpoints.delete(self.dom, name):
                self.notes.append(note)
        if orphans:
            self.notes.append(f"deleted checkpoints of an interrupted backup: {', '.join(orphans)}")

    # -- libvirt's XML --------------------------------------------------------------------------

    def _directory(self) -> str:
        return self.directory or domain_directory(self.dom)

    def _backup_xml(self, described: dict[str, HostDisk]) -> str:
        root = ET.Element("domainbackup", mode="pull")
        ET.SubElement(root, "server", transport="unix", socket=self.socket)
        disks = ET.SubElement(root, "disks")
        for target in described:
            plan = self.plans.get(target)
            if plan is None:
                ET.SubElement(disks, "disk", name=target, backup="no")
                continue
            mode = {"backupmode": "incremental", "incremental": plan.since} if plan.since else {"backupmode": "full"}
            disk = ET.SubElement(disks, "disk", {"name": target, "backup": "yes", "type": "file", **mode})
            ET.SubElement(disk, "scratch", file=posixpath.join(self._directory(), f"{self.checkpoint}-{target}.qcow2"))
        return ET.tostring(root, encoding="unicode")

    def _exports(self) -> dict[str, tuple[str, str | None]]:
        """disk -> (NBD export name, the dirty bitmap it publishes) as libvirt chose them."""
        desc = ET.fromstring(self.dom.backupGetXMLDesc(0))
        return {d.attrib["name"]: (d.get("exportname") or d.attrib["name"], d.get("exportbitmap"))
                for d in desc.iterfind("./disks/disk[@backup='yes']")}
