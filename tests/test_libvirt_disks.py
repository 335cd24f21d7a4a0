"""Every disk kind of a libvirt domain, on a libvirtd configured as Debian configures it (QEMU as
libvirt-qemu, DAC relabelling), and checkpoints that survive what admins do to domains.

The first domain has a qcow2 disk, a raw file, a read-only raw file, a raw block device (a loop
device), a second qcow2 disk and a cdrom; the second a qcow2 disk, a qcow2 disk with a data
file, an NBD network disk and a shareable raw disk. The guest writes 64 KiB to its disks every
second. Each backup is taken with the domain paused right after reference copies of its
disks, so each restored disk must equal its reference byte for byte.
"""
from __future__ import annotations

import re
from pathlib import Path

import libvirt
import pytest
from backup_helpers import same_content
from guest.harness import MiB
from libvirt_helpers import DiskDef, LibvirtGuest, libvirt_guest, reference_copies
from libvirtd_server import libvirtd, running_libvirtd  # noqa: F401  (fixture)

from appliance.backups.host import HostBackups
from appliance.backups.libvirt import LibvirtBackupService
from appliance.backups.service import BackupResult
from appliance.context import Appliance
from appliance.restores.libvirt import LibvirtRestoreService
from restore import FileDestination, restore_disk
from vmm.libvirt_xml import domain_disks

HOST = "kvm1"
DISKS = (DiskDef("vda"), DiskDef("vdb", format="raw"), DiskDef("vdc", 64 * MiB, format="raw", readonly=True),
         DiskDef("vdd", format="raw", kind="block"), DiskDef("vde"), DiskDef("sda", 4 * MiB, format="raw",
                                                                             device="cdrom"))
WRITER = "cairn.mode=writer cairn.writes=1000 cairn.interval=1 cairn.writedisks=vda,vdb,vdd,vde"
BACKED_UP = ["vda", "vdb", "vdc", "vdd", "vde"]


def service(appliance: Appliance) -> LibvirtBackupService:
    return LibvirtBackupService(HostBackups(appliance.settings, appliance.catalog, appliance.store), appliance.hosts)


def writes_seen(guest: LibvirtGuest) -> int:
    return len(re.findall(r"CAIRN: WRITE n=", guest.serial()))


def paused_backup(appliance: Appliance, guest: LibvirtGuest, refdir: Path,
                  disks: list[str] = BACKED_UP) -> tuple[BackupResult, dict[str, Path]]:
    """Reference copies and a backup of the same instant: the domain is paused around both."""
    seen = writes_seen(guest)
    guest.wait_serial(f"CAIRN: WRITE n={seen + 1}", timeout=120)   # new writes to find
    guest.dom.suspend()
    try:
        refs = reference_copies(guest, refdir, disks)
        return service(appliance).create(HOST, guest.dom.name()), refs
    finally:
        guest.dom.resume()


def assert_restores(appliance: Appliance, result: BackupResult, refs: dict[str, Path], out: Path,
                    disks: list[str] = BACKED_UP) -> None:
    backup_id = result.manifest.backup_id
    assert sorted(d.name for d in result.manifest.disks) == disks
    for disk in disks:
        restore_disk(appliance.store, backup_id, disk, out, fmt="raw")
        assert same_content(refs[disk], out), f"backup {backup_id}: {disk} does not restore byte for byte"
        out.unlink()


def reads(result: BackupResult) -> dict[str, str]:
    """disk -> how the backup says it read it."""
    return {d["target"]: d["read"] for d in result.manifest.vm_definition["libvirt"]["disks"]}


def read_bytes(result: BackupResult, disk: str) -> int:
    return result.manifest.disk(disk).stats.bytes_read


def restart(guest: LibvirtGuest) -> None:
    """Start the stopped domain again, its console log started afresh."""
    guest.serial_log.write_text("")
    guest.dom.create()
    guest.wait_serial("CAIRN: READY")


def leftovers(guest: LibvirtGuest) -> list[str]:
    return sorted(p.name for p in guest.domain_dir().iterdir() if p.name.startswith("cairn-"))


@pytest.mark.slow
def test_every_disk_kind_survives_redefine_restart_and_disk_restore(appliance, libvirtd, guest_kernel,  # noqa: F811
                                                                     tmp_path):
    appliance.hosts.add(HOST, libvirtd.uri, libvirt_dir=str(libvirtd.lib_dir))
    out = tmp_path / "out.raw"
    with libvirt_guest(libvirtd, "kinds", guest_kernel, append=WRITER, disks=DISKS) as guest:
        # The first backup reads everything; libvirt checkpoints only the qcow2 disks.
        full, refs = paused_backup(appliance, guest, tmp_path)
        assert full.manifest.kind == "full"
        assert reads(full) == {"vda": "full", "vdb": "full", "vdc": "full", "vdd": "full", "vde": "full",
                               "sda": "left out"}
        notes = "\n".join(full.notes)
        for expected in ("vdb: raw image: libvirt keeps checkpoints only in qcow2 images", "vdc: read-only",
                         "vdd: raw image", "sda: left out: a cdrom"):
            assert expected in notes, full.notes
        assert "libvirt 9.0 here; from 10.10" in notes, full.notes
        assert_restores(appliance, full, refs, out)
        assert guest.checkpoints() == [full.manifest.checkpoint]
        assert leftovers(guest) == []

        # After guest writes: the qcow2 disks are read incrementally, the others in full.
        inc, refs = paused_backup(appliance, guest, tmp_path)
        assert inc.manifest.kind == "incremental" and inc.manifest.parent == full.manifest.backup_id
        assert reads(inc) == {**reads(full), "vda": "incremental", "vde": "incremental"}
        assert read_bytes(inc, "vda") < read_bytes(full, "vda") and read_bytes(inc, "vda") <= 8 * MiB
        assert_restores(appliance, inc, refs, out)
        assert guest.checkpoints() == [inc.manifest.checkpoint]

        # Undefined and defined again while it runs: libvirt keeps the running domain's checkpoints.
        xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        guest.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        guest.dom.connect().defineXML(xml)
        assert guest.checkpoints() == [inc.manifest.checkpoint]
        # Shut down, undefined (libvirt forgets its checkpoints), defined again from its XML,
        # libvirtd restarted, started: the checkpoint is redefined from Cairn's ledger once
        # libvirt has proven its bitmaps, and the backup stays incremental.
        guest.dom.destroy()
        guest.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        guest.dom.connect().defineXML(xml)
        libvirtd.restart()
        guest.refresh()
        restart(guest)
        assert guest.checkpoints() == []
        again, refs = paused_backup(appliance, guest, tmp_path)
        assert again.manifest.kind == "incremental", again.notes
        assert reads(again)["vda"] == reads(again)["vde"] == "incremental"
        assert any(f"libvirt had lost checkpoint {inc.manifest.checkpoint}" in n and "vda, vde proven intact" in n
                   for n in again.notes), again.notes
        assert_restores(appliance, again, refs, out)
        assert guest.checkpoints() == [again.manifest.checkpoint]

        # vde restored from an earlier backup while the domain was down: its image has no bitmap,
        # so vde is read in full and says why; vda stays incremental.
        guest.dom.destroy()
        restore_disk(appliance.store, inc.manifest.backup_id, "vde", FileDestination(guest.files["vde"], "qcow2",
                                                                                     force=True))
        restart(guest)
        after, refs = paused_backup(appliance, guest, tmp_path)
        assert after.manifest.kind == "incremental"
        assert reads(after)["vda"] == "incremental" and reads(after)["vde"] == "full"
        assert any(n.startswith("vde: its bitmap of checkpoint") and "missing or broken" in n for n in after.notes), \
            after.notes
        assert_restores(appliance, after, refs, out)
        assert guest.checkpoints() == [after.manifest.checkpoint]
        assert leftovers(guest) == []

        # The whole domain as a new libvirt domain: its own name, UUID, MACs and files, and it boots.
        restores = LibvirtRestoreService(appliance.store, appliance.hosts)
        folder = libvirtd.folder("restored")
        copy = restores.as_new_domain(HOST, after.manifest.backup_id, "kinds-copy", directory=str(folder))
        assert sorted(copy.disks) == BACKED_UP
        for disk, path in copy.disks.items():
            assert same_content(refs[disk], Path(path), "qcow2" if disk in ("vda", "vde") else "raw"), disk
        conn = libvirt.open(libvirtd.uri)
        twin = conn.lookupByName("kinds-copy")
        try:
            assert twin.UUIDString() != guest.dom.UUIDString()
            twin.create()
            LibvirtGuest(libvirtd, twin, {}, {}, folder / "kinds-copy-serial0.log", folder).wait_serial("CAIRN: READY")
        finally:
            twin.destroy()
            twin.undefine()
        conn.close()


MORE = (DiskDef("vda"), DiskDef("vdb", data_file=True), DiskDef("vdc", format="raw", kind="network"),
        DiskDef("vdd", format="raw", shareable=True))


@pytest.mark.slow
def test_data_file_network_and_shareable_disks_and_a_move_to_another_host(appliance, libvirtd, guest_kernel,  # noqa: F811
                                                                          tmp_path):
    appliance.hosts.add(HOST, libvirtd.uri, libvirt_dir=str(libvirtd.lib_dir))
    out = tmp_path / "out.raw"
    with running_libvirtd() as other, libvirt_guest(libvirtd, "more", guest_kernel, disks=MORE,
                                                    append=WRITER.replace("vde", "vdc")) as guest:
        full, refs = paused_backup(appliance, guest, tmp_path, disks=["vda", "vdb", "vdc", "vdd"])
        assert_restores(appliance, full, refs, out, ["vda", "vdb", "vdc", "vdd"])
        # The qcow2 image with a data file keeps its bitmap in the qcow2 file: incremental.
        inc, refs = paused_backup(appliance, guest, tmp_path, disks=["vda", "vdb", "vdc", "vdd"])
        assert reads(inc) == {"vda": "incremental", "vdb": "incremental", "vdc": "full", "vdd": "full"}
        assert read_bytes(inc, "vdb") <= 8 * MiB
        assert any(n.startswith("vdc: raw image") for n in inc.notes) and any(n.startswith("vdd: raw image")
                                                                                for n in inc.notes), inc.notes
        assert_restores(appliance, inc, refs, out, ["vda", "vdb", "vdc", "vdd"])

        # Moved to another host: shut down and undefined here, defined and started there (same
        # files), and Cairn's host pointed at it. The other libvirtd has never heard of the
        # checkpoint: it is redefined from the ledger, and the qcow2 disks stay incremental.
        xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        guest.dom.destroy()
        guest.dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        guest.daemon, guest.dom = other, libvirt.open(other.uri).defineXML(xml)
        restart(guest)
        appliance.hosts.remove(HOST)
        appliance.hosts.add(HOST, other.uri, libvirt_dir=str(other.lib_dir))
        moved, refs = paused_backup(appliance, guest, tmp_path, disks=["vda", "vdb", "vdc", "vdd"])
        assert moved.manifest.kind == "incremental" and reads(moved)["vda"] == reads(moved)["vdb"] == "incremental"
        assert any(f"libvirt had lost checkpoint {inc.manifest.checkpoint}" in n for n in moved.notes), moved.notes
        assert_restores(appliance, moved, refs, out, ["vda", "vdb", "vdc", "vdd"])
        assert guest.checkpoints() == [moved.manifest.checkpoint] and leftovers(guest) == []

        # Restored as a new domain into a directory storage pool of the new host.
        pool_dir = other.root / "pool"
        pool_dir.mkdir(mode=0o755)
        conn = libvirt.open(other.uri)
        pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>restored</name><target><path>{pool_dir}</path>"
                                         "</target></pool>")
        pool.create()
        copy = LibvirtRestoreService(appliance.store, appliance.hosts).as_new_domain(
            HOST, moved.manifest.backup_id, "more-copy", pool="restored")
        assert sorted(v.name() for v in pool.listAllVolumes()) == sorted(Path(p).name for p in copy.disks.values())
        twin = conn.lookupByName("more-copy")
        disks = {d.target: d for d in domain_disks(twin.XMLDesc(0))}
        assert {t: (d.kind, d.format, d.data_file) for t, d in disks.items()} == {
            "vda": ("file", "qcow2", None), "vdb": ("file", "qcow2", None), "vdc": ("file", "raw", None),
            "vdd": ("file", "raw", None)}
        twin.undefine()
        pool.destroy()
        pool.undefine()
        conn.close()
