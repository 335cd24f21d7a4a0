"""A host whose VMs libvirt runs: list its domains, start and stop them (libvirt-python).

Cairn does not take the domains over: their definitions stay libvirt's, and every call opens a
short connection to the host's URI (`qemu:///system`, `qemu+ssh://root@kvm1/system`, ...), so
a libvirtd that restarts in between costs nothing.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from .hosts import (
    HostError,
    HostUnreachableError,
    HostVM,
    HostVMNotFoundError,
    HostVMStateError,
)
from .libvirt_xml import domain_disks

# libvirt prints every error to stderr by default; ours carry the message instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "stopping", libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def domain_state(dom: libvirt.virDomain) -> str:
    return _STATES.get(dom.state()[0], "unknown")


class LibvirtHost:
    def __init__(self, uri: str):
        self.uri = uri

    @contextmanager
    def connect(self) -> Iterator[libvirt.virConnect]:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise HostUnreachableError(f"cannot connect to libvirt at {self.uri}: {e.get_error_message()}") from e
        try:
            yield conn
        except libvirt.libvirtError as e:
            raise HostError(f"libvirt at {self.uri}: {e.get_error_message()}") from e
        finally:
            conn.close()

    @contextmanager
    def domain(self, name: str) -> Iterator[libvirt.virDomain]:
        with self.connect() as conn:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise HostVMNotFoundError(f"libvirt at {self.uri} has no domain {name!r}") from e
                raise
            yield dom

    def check(self) -> str:
        """The hypervisor's description, e.g. "QEMU 7.2.0": proves the URI answers."""
        with self.connect() as conn:
            version = conn.getVersion()
            return f"{conn.getType()} {version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"

    def vms(self) -> list[HostVM]:
        with self.connect() as conn:
            return sorted((_info(d) for d in conn.listAllDomains()), key=lambda d: d.name)

    def info(self, name: str) -> HostVM:
        with self.domain(name) as dom:
            return _info(dom)

    def start(self, name: str) -> HostVM:
        with self.domain(name) as dom:
            if dom.isActive():
                raise HostVMStateError(f"domain {name!r} is already running")
            dom.create()
            return _info(dom)

    def stop(self, name: str, timeout: float = 60.0, force: bool = False) -> HostVM:
        """ACPI power button first (unless `force`), then pulled out after `timeout` seconds."""
        with self.domain(name) as dom:
            if not dom.isActive():
                raise HostVMStateError(f"domain {name!r} is not running")
            if not force:
                dom.shutdown()
                deadline = time.monotonic() + timeout
                while dom.isActive() and time.monotonic() < deadline:
                    time.sleep(0.2)
            if dom.isActive():
                dom.destroy()
            return _info(dom)

    def definition(self, name: str) -> str:
        """The domain's persistent definition, as `virsh dumpxml --inactive` gives it."""
        with self.domain(name) as dom:
            return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    def exists(self, name: str) -> bool:
        with self.connect() as conn:
            try:
                conn.lookupByName(name)
                return True
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise

    def define(self, xml: str) -> HostVM:
        """Define a domain (a new one, or a new definition of one by its name and UUID)."""
        with self.connect() as conn:
            return _info(conn.defineXML(xml))

    def undefine(self, name: str) -> None:
        """Remove a stopped domain's definition (and its checkpoint and snapshot metadata); its
        disks stay."""
        with self.domain(name) as dom:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

    def forget_moments(self, name: str) -> list[str]:
        """Drop the domain's checkpoint and snapshot metadata (not their bitmaps or files), as
        when its disks were replaced under them. Returns what was dropped."""
        dropped = []
        with self.domain(name) as dom:
            for checkpoint in dom.listAllCheckpoints(0):
                dropped.append(f"checkpoint {checkpoint.getName()}")
                checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
            for snapshot in dom.listAllSnapshots(0):
                dropped.append(f"snapshot {snapshot.getName()}")
                snapshot.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        return dropped

    def pool_directory(self, pool: str) -> str:
        """Where a storage pool keeps its volumes as files (dir, fs and netfs pools)."""
        with self.connect() as conn:
            try:
                found = conn.storagePoolLookupByName(pool)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise HostVMNotFoundError(f"libvirt at {self.uri} has no storage pool {pool!r}") from e
                raise
            root = ET.fromstring(found.XMLDesc(0))
            if root.get("type") not in ("dir", "fs", "netfs"):
                raise HostError(f"storage pool {pool} is a {root.get('type')} pool: disks are restored as files, "
                                "into a dir, fs or netfs pool")
            path = root.findtext("./target/path")
            if not path:
                raise HostError(f"storage pool {pool} names no target path to restore disks into")
            return path

    def refresh_pool(self, pool: str) -> None:
        with self.connect() as conn:
            conn.storagePoolLookupByName(pool).refresh(0)

    def snapshot(self, name: str, snapshot: str) -> list[str]:
        """An external, disk-only snapshot of every disk at one instant (the domain may run):
        each disk goes on in a new overlay beside its image, `<image base>.<snapshot>`. libvirt
        carries the checkpoints' bitmaps into the overlays, so the next backup stays incremental.
        Returns the domain's snapshots."""
        root = ET.Element("domainsnapshot")
        ET.SubElement(root, "name").text = snapshot
        disks = ET.SubElement(root, "disks")
        with self.domain(name) as dom:
            for disk in domain_disks(dom.XMLDesc(0)):
                # Media and read-only disks do not change: they stay where they are.
                changing = disk.holds_data and not disk.readonly
                ET.SubElement(disks, "disk", name=disk.target, snapshot="external" if changing else "no")
            dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"),
                                  libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
            return _snapshot_names(dom)

    def snapshots(self, name: str) -> list[str]:
        """The domain's snapshots, oldest first."""
        with self.domain(name) as dom:
            return _snapshot_names(dom)


def _snapshot_names(dom: libvirt.virDomain) -> list[str]:
    by_time = sorted((int(ET.fromstring(s.getXMLDesc(0)).findtext("creationTime", "0")), s.getName())
                     for s in dom.listAllSnapshots(0))
    return [name for _created, name in by_time]


def _info(dom: libvirt.virDomain) -> HostVM:
    _state, max_kib, _mem, vcpus, _cpu_time = dom.info()
    return HostVM(dom.name(), dom.UUIDString(), domain_state(dom), vcpus, max_kib // 1024,
                      domain_disks(dom.XMLDesc(0)))
