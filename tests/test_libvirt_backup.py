"""Backing up libvirt domains through libvirt's pull-mode backup API, on a real libvirtd.

The domain runs the test guest in writer mode (64 KiB of random data at 200 MiB + n MiB every
second). Each backup is taken with the domain paused right after a reference copy of its disk,
so the restored disk must equal the reference byte for byte.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from backup_helpers import same_content
from libvirt_helpers import LibvirtGuest, libvirt_guest, reference_copy
from libvirtd_server import libvirtd  # noqa: F401  (fixture)

from appliance.backups.host import HostBackups, backup_vm_name
from appliance.backups.libvirt import LibvirtBackupService
from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from appliance.hosts.service import HostSpecError, HostUnreachableError
from restore import restore_disk

HOST = "kvm1"


def service(appliance: Appliance) -> LibvirtBackupService:
    return LibvirtBackupService(HostBackups(appliance.settings, appliance.catalog, appliance.store), appliance.hosts)


def writes_seen(guest: LibvirtGuest) -> int:
    return len(re.findall(r"CAIRN: WRITE n=", guest.serial()))


def paused_backup(appliance: Appliance, guest: LibvirtGuest, refdir: Path, full: bool = False):
    """Reference copy and backup of the same instant: the domain is paused around both."""
    guest.dom.suspend()
    try:
        reference_copy(guest, refdir / "ref.raw")
        return service(appliance).create(HOST, guest.dom.name(), full=full)
    finally:
        guest.dom.resume()


def reader_dies(disk: str, done: int, total: int) -> None:
    raise RuntimeError("reader died")


def assert_restores(appliance: Appliance, backup_id: str, reference: Path, out: Path) -> None:
    restore_disk(appliance.store, backup_id, "vda", out, fmt="raw")
    assert same_content(reference, out), f"backup {backup_id} does not restore the disk byte for byte"
    out.unlink()


@pytest.mark.slow
def test_full_then_two_incrementals_restore_byte_exact(appliance, libvirtd, guest_kernel, tmp_path):  # noqa: F811
    appliance.hosts.add(HOST, libvirtd.uri, libvirt_dir=str(libvirtd.lib_dir))
    with libvirt_guest(libvirtd, "lvguest", guest_kernel,
                       append="cairn.mode=writer cairn.writes=40 cairn.interval=1") as guest:
        results = []
        for step in range(3):
            # Each backup after the first has new writes to find.
            guest.wait_serial(f"CAIRN: WRITE n={2 * step}", timeout=120)
            if step == 2:
                # A snapshot between backups: the disk goes on in an overlay, and libvirt carries
                # the checkpoint's bitmap into it, so the next backup is still incremental.
                assert appliance.hosts.snapshot(HOST, "lvguest", "before-upgrade") == ["before-upgrade"]
            result = paused_backup(appliance, guest, tmp_path)
            assert_restores(appliance, result.manifest.backup_id, tmp_path / "ref.raw", tmp_path / "out.raw")
            # libvirt keeps exactly one checkpoint of Cairn's: the newest backup's.
            assert guest.checkpoints() == [f"cairn-{result.manifest.backup_id}"]
            results.append(result)

        full, inc1, inc2 = (r.manifest for r in results)
        assert (full.kind, inc1.kind, inc2.kind) == ("full", "incremental", "incremental")
        assert guest.dom.XMLDesc(0).count(".before-upgrade") == 1   # vda now writes to the overlay
        assert (inc1.parent, inc2.parent) == (full.backup_id, inc1.backup_id)
        read = [sum(d.stats.bytes_read for d in m.disks) for m in (full, inc1, inc2)]
        # The incrementals read only chunks the guest wrote into (64 KiB writes), not the disk.
        assert read[1] < read[0] and read[2] < read[0], read
        records = {r.id: r for r in appliance.backups.list(backup_vm_name(HOST, "lvguest"))}
        assert [records[m.backup_id].status for m in (full, inc1, inc2)] == ["ok"] * 3

        # A backup that fails after libvirt froze the disks: recorded as failed, nothing in the
        # store, and the previous checkpoint is still the base.
        with pytest.raises(RuntimeError, match="reader died"):
            service(appliance).create(HOST, "lvguest", progress=reader_dies)
        assert guest.checkpoints() == [f"cairn-{inc2.backup_id}"]
        assert not [p for p in guest.domain_dir().iterdir() if p.name.startswith("cairn-")]   # socket, scratch files
        assert [r.status for r in appliance.backups.list(backup_vm_name(HOST, "lvguest"))][-1] == "failed"
        assert len(appliance.store.list_backups(backup_vm_name(HOST, "lvguest"))) == 3

        # A checkpoint removed behind Cairn's back: the next backup reads in full and says why.
        guest.dom.checkpointLookupByName(f"cairn-{inc2.backup_id}", 0).delete(0)
        again = paused_backup(appliance, guest, tmp_path)
        assert again.manifest.kind == "full"
        assert any("missing" in n for n in again.notes), again.notes
        assert_restores(appliance, again.manifest.backup_id, tmp_path / "ref.raw", tmp_path / "out.raw")


def test_bad_hosts_and_domains_are_refused_and_change_nothing(appliance, libvirtd, guest_kernel,  # noqa: F811
                                                              tmp_path):
    with pytest.raises(HostUnreachableError, match="cannot connect"):
        appliance.hosts.add(HOST, f"qemu:///system?socket={tmp_path}/no-such.sock")
    with pytest.raises(ValueError, match="invalid host name"):
        appliance.hosts.add("Bad Name", libvirtd.uri)
    with pytest.raises(ValueError, match="not one of"):
        appliance.hosts.add(HOST, libvirtd.uri, kind="vmware")
    assert appliance.hosts.list() == []

    appliance.hosts.add(HOST, libvirtd.uri)
    with pytest.raises(ConflictError, match="already exists"):
        appliance.hosts.add(HOST, libvirtd.uri)
    with pytest.raises(NotFoundError, match="no domain 'nope'"):
        service(appliance).create(HOST, "nope")
    with pytest.raises(NotFoundError, match="no host"):
        service(appliance).create("elsewhere", "nope")
    with libvirt_guest(libvirtd, "lvstopped", guest_kernel, start=False):
        with pytest.raises(HostSpecError, match="invalid snapshot name"):
            appliance.hosts.snapshot(HOST, "lvstopped", "../evil")
        with pytest.raises(ConflictError, match="running domains only"):
            service(appliance).create(HOST, "lvstopped")
        assert [d.name for d in appliance.hosts.vms(HOST)] == ["lvstopped"]
        assert appliance.hosts.vm(HOST, "lvstopped").state == "stopped"
    assert appliance.backups.list() == []
    assert appliance.store.list_backups() == []
