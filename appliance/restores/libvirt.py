"""Restoring a libvirt domain from its backup: as a new domain, or over the one backed up.

A backup of a domain keeps its definition (backups/libvirt.py), so a restore defines it again:

- As a new domain: the definition gets the new name, no UUID (libvirt makes one) and new MACs,
  so both domains can run at once; each backed-up disk is restored into a new file in the
  chosen directory (or directory pool), <name>-<disk>.<qcow2|raw> (qcow2 stays qcow2, every
  other kind becomes a sparse raw file), and the domain opens that file; file-backed consoles
  write beside them. Disks the backup left out are not in the new domain, except CD-ROMs and
  floppies, which keep their medium. The domain is defined only once every disk is restored
  (and verified): a failure removes what was written and defines nothing.
- Over the old one, all or nothing as for Cairn's own VMs: with the domain stopped, every
  backed-up disk is restored into a new file beside its image while the old images stay
  untouched; only then does one defineXML point the domain at the new files. Until that define
  the domain opens its old images, whatever fails or dies in between (the next restore removes
  what such a one left). Afterwards the replaced images go, and so does libvirt's checkpoint
  and snapshot metadata, which described them: the next backup reads in full and says why.
  Disks that are block devices or network disks cannot be replaced like that: restore those
  with `cairn restore disk` onto the device, or restore the domain as a new one.

The disks are written by this machine, so the libvirt host must be this machine (or see the
same files); a qemu+ssh:// host is refused with that remedy.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.errors import ConflictError, NotFoundError
from appliance.hosts.service import HostCommandError, HostService, HostSpecError, host_errors
from dedup import BackupManifest, Store
from restore import FileDestination
from restore.whole_vm import DiskProgress, restore_disks
from vmm import libvirt_xml
from vmm.libvirt_host import LibvirtHost
from vmm.spec import VM_NAME_RE, random_mac

from ..backups.libvirt import DEFINITION_KEY

MEDIA = ("cdrom", "floppy")


@dataclass(frozen=True)
class DomainRestore:
    host: str
    domain: str
    backup_id: str
    disks: dict[str, str]        # disk -> the file the domain now opens
    bytes_written: int
    seconds: float
    verified: bool
    notes: list[str] = field(default_factory=list)


def backed_up_domain(manifest: BackupManifest) -> dict[str, Any]:
    """What a backup of a libvirt domain keeps of it: name, uuid, xml and its disks' table."""
    domain = manifest.vm_definition.get(DEFINITION_KEY)
    if not domain:
        raise ConflictError(f"backup {manifest.backup_id} of {manifest.vm} carries no libvirt domain definition: "
                            "restore its disks with `cairn restore disk` instead")
    return domain


def restored_format(disk: dict[str, Any]) -> str:
    return "qcow2" if disk["format"] == "qcow2" else "raw"


class LibvirtRestoreService:
    def __init__(self, store: Store, hosts: HostService):
        self.store = store
        self.hosts = hosts

    def as_new_domain(self, host: str, backup_id: str, name: str, directory: str | None = None,
                      pool: str | None = None, start: bool = False, verify: bool = True,
                      progress: DiskProgress | None = None) -> DomainRestore:
        libvirt = self._local(host)
        manifest = self.store.get_backup(backup_id)
        domain = backed_up_domain(manifest)
        if not isinstance(name, str) or not VM_NAME_RE.match(name):
            raise HostSpecError(f"invalid domain name {name!r}: use 1-63 characters a-z 0-9 _ -, "
                                "starting with a letter")
        if bool(directory) == bool(pool):
            raise HostSpecError("restore the disks into a directory or a storage pool: give one of them")
        with host_errors():
            if libvirt.exists(name):
                raise ConflictError(f"host {host} already has a domain {name}: choose another name, "
                                    "or restore over it")
            if directory:
                folder = Path(directory)
            else:
                assert pool, "a directory or a pool was checked to be given"
                folder = Path(libvirt.pool_directory(pool))
        if not folder.is_dir():
            raise NotFoundError(f"{folder} is not a directory")
        backed_up = {d.name for d in manifest.disks}
        table = {d["target"]: d for d in domain["disks"]}
        defined = {d.target for d in libvirt_xml.domain_disks(domain["xml"])}
        files = {t: (str(folder / f"{name}-{t}.{restored_format(table[t])}"), restored_format(table[t]))
                 for t in backed_up}
        dropped = {t for t, d in table.items() if t not in backed_up and d["device"] not in MEDIA}
        notes = [f"{t}: not in the backup ({table[t]['why'] or 'left out'}): not in the new domain"
                 for t in sorted(dropped)]
        notes += [f"{t}: was attached to the running domain only; restored to {files[t][0]}, not attached"
                  for t in sorted(backed_up - defined)]
        results = restore_disks(self.store, manifest, {t: FileDestination(Path(p), fmt, force=False)
                                                       for t, (p, fmt) in files.items()}, verify, progress)
        root = libvirt_xml.with_disks(domain["xml"], files, dropped)
        macs = [random_mac() for _ in root.iterfind("./devices/interface")]
        try:
            with host_errors():
                libvirt.define(libvirt_xml.to_string(libvirt_xml.as_new_domain(root, name, macs, str(folder))))
                if pool:
                    libvirt.refresh_pool(pool)
        except BaseException:
            for path, _fmt in files.values():
                Path(path).unlink(missing_ok=True)
            raise
        if start:
            with host_errors():
                libvirt.start(name)
        return DomainRestore(host, name, backup_id, {t: p for t, (p, _fmt) in files.items()},
                             sum(r.bytes_written for r in results), sum(r.seconds for r in results), verify, notes)

    def over_domain(self, host: str, backup_id: str, stop: bool = False, verify: bool = True,
                    progress: DiskProgress | None = None) -> DomainRestore:
        """Replace the disks of the domain the backup was taken of, all or nothing. A running
        domain is refused unless stop=True, which shuts it down first."""
        libvirt = self._local(host)
        manifest = self.store.get_backup(backup_id)
        name = backed_up_domain(manifest)["name"]
        with host_errors():
            self._ensure_stopped(libvirt, name, stop)
            current = libvirt.definition(name)
        images = libvirt_xml.disk_files(current)
        targets = [d.name for d in manifest.disks]
        unfit = [t for t in targets if t not in images]
        if unfit:
            raise ConflictError(f"disks {', '.join(unfit)} of domain {name} are not image files now (block devices, "
                                "network disks, or gone): restore those with `cairn restore disk`, or restore the "
                                "domain as a new one")
        formats = {d.target: restored_format(vars(d)) for d in libvirt_xml.domain_disks(current)}
        self._remove_unswapped(name, images)
        suffix = secrets.token_hex(4)
        files = {t: (str(Path(images[t]).with_name(f"{name}-{t}-restored-{suffix}.{formats[t]}")), formats[t])
                 for t in targets}
        results = restore_disks(self.store, manifest, {t: FileDestination(Path(p), fmt, force=False)
                                                       for t, (p, fmt) in files.items()}, verify, progress)
        try:
            with host_errors():
                if libvirt.info(name).state != "stopped":
                    raise ConflictError(f"domain {name} was started during the restore; its disks were left "
                                        "as they were")
                libvirt.define(libvirt_xml.to_string(libvirt_xml.with_disks(current, files)))
        except BaseException:
            for path, _fmt in files.values():
                Path(path).unlink(missing_ok=True)
            raise
        with host_errors():
            dropped = libvirt.forget_moments(name)
        for target in targets:
            Path(images[target]).unlink(missing_ok=True)
        notes = [f"dropped libvirt's {', '.join(dropped)}: they described the replaced images"] if dropped else []
        return DomainRestore(host, name, backup_id, {t: p for t, (p, _fmt) in files.items()},
                             sum(r.bytes_written for r in results), sum(r.seconds for r in results), verify, notes)

    def _local(self, host: str) -> LibvirtHost:
        view = self.hosts.get(host)
        if view.kind != "libvirt":
            raise ConflictError(f"host {host} is a {view.kind} host: restores into libvirt need a libvirt host")
        if urlsplit(view.uri).hostname:
            raise HostCommandError(f"host {host} is remote ({view.uri}): a restore into libvirt writes the disks "
                                   "from this machine, so it needs a libvirt on this machine; restore the disks "
                                   "to the host with `cairn restore disk ... sftp://...` and define the domain there")
        return self.hosts.libvirt(host)

    @staticmethod
    def _ensure_stopped(libvirt: LibvirtHost, name: str, stop: bool) -> None:
        state = libvirt.info(name).state
        if state == "stopped":
            return
        if not stop:
            raise ConflictError(f"domain {name} is {state}; stop it first, or restore with --stop (the API's stop)")
        libvirt.stop(name)

    @staticmethod
    def _remove_unswapped(name: str, images: dict[str, str]) -> None:
        """What an earlier restore over this domain left when it died before its define: partial
        files and complete restored disks the domain never opened."""
        in_use = {Path(p).resolve() for p in images.values()}
        for folder in {Path(p).parent for p in images.values()}:
            leftovers = [*folder.glob(f".{name}-*-restored-*.cairn-partial"), *folder.glob(f"{name}-*-restored-*")]
            for leftover in leftovers:
                if leftover.resolve() not in in_use:
                    leftover.unlink()
