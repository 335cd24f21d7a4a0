"""What an interrupted backup or restore of a libvirt domain leaves, and what the next run makes
of it: a `cairn` killed mid-backup, a restore over the domain that fails half-way, on the
private libvirtd (QEMU as libvirt-qemu)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
from backup_helpers import same_content
from guest.harness import MiB
from libvirt_helpers import DiskDef, LibvirtGuest, libvirt_guest, reference_copies
from libvirtd_server import libvirtd  # noqa: F401  (fixture)

from appliance.backups.host import HostBackups, backup_vm_name
from appliance.backups.libvirt import LibvirtBackupService
from appliance.context import Appliance
from appliance.restores.libvirt import LibvirtRestoreService

HOST = "kvm1"
CAIRN = str(Path(sys.executable).with_name("cairn"))


def service(appliance: Appliance) -> LibvirtBackupService:
    return LibvirtBackupService(HostBackups(appliance.settings, appliance.catalog, appliance.store), appliance.hosts)


def backup_job(dom: libvirt.virDomain) -> str | None:
    try:
        return dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return None


def cairn_files(guest: LibvirtGuest) -> list[str]:
    return sorted(p.name for p in guest.domain_dir().iterdir() if p.name.startswith("cairn-"))


def test_a_killed_backup_leaves_nothing_after_the_next_one(appliance, libvirtd, guest_kernel):  # noqa: F811
    appliance.hosts.add(HOST, libvirtd.uri, libvirt_dir=str(libvirtd.lib_dir))
    # A block device is read whole: 1 GiB keeps the backup busy long enough to be killed.
    disks = (DiskDef("vda"), DiskDef("vdb", 1024 * MiB, format="raw", kind="block"))
    with libvirt_guest(libvirtd, "killed", guest_kernel, disks=disks) as guest:
        first = service(appliance).create(HOST, "killed")
        vm = backup_vm_name(HOST, "killed")

        proc = subprocess.Popen([CAIRN, "host", "backup", HOST, "killed"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={**os.environ,
                                                             "CAIRN_DATA_DIR": str(appliance.settings.data_dir)})
        deadline = time.monotonic() + 120
        while backup_job(guest.dom) is None or len(guest.checkpoints()) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the backup job never began"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Left behind: libvirt's job with its socket and scratch files, the new checkpoint, and a
        # catalog row that still says running.
        assert backup_job(guest.dom) is not None
        killed = [r for r in appliance.backups.list(vm) if r.id != first.manifest.backup_id]
        assert len(killed) == 1 and cairn_files(guest) == sorted([f"{killed[0].checkpoint}.sock",
                                                                  f"{killed[0].checkpoint}-vda.qcow2",
                                                                  f"{killed[0].checkpoint}-vdb.qcow2"])
        assert guest.checkpoints() == sorted([first.manifest.checkpoint, killed[0].checkpoint])

        after = service(appliance).create(HOST, "killed")
        assert after.manifest.kind == "incremental" and after.manifest.parent == first.manifest.backup_id
        assert any("ended the backup job of an interrupted backup" in n for n in after.notes), after.notes
        assert any(f"deleted checkpoints of an interrupted backup: {killed[0].checkpoint}" in n
                   for n in after.notes), after.notes
        assert backup_job(guest.dom) is None
        assert cairn_files(guest) == []
        assert guest.checkpoints() == [after.manifest.checkpoint]
        records = {r.id: r for r in appliance.backups.list(vm)}
        assert records[killed[0].id].status == "failed" and "interrupted" in records[killed[0].id].error
        assert [r.status for r in records.values()].count("running") == 0


def stop_in_the_middle(disk: str, done: int, total: int) -> None:
    if disk == "vdb":
        raise RuntimeError("restore stopped half-way")


@pytest.mark.slow
def test_restore_over_the_domain_is_all_or_nothing(appliance, libvirtd, guest_kernel, tmp_path):  # noqa: F811
    appliance.hosts.add(HOST, libvirtd.uri, libvirt_dir=str(libvirtd.lib_dir))
    disks = (DiskDef("vda"), DiskDef("vdb", format="raw"))
    with libvirt_guest(libvirtd, "over", guest_kernel, disks=disks,
                       append="cairn.mode=writer cairn.writes=1000 cairn.interval=1 cairn.writedisks=vda,vdb") as guest:
        guest.wait_serial("CAIRN: WRITE n=2", timeout=120)
        guest.dom.suspend()
        refs = reference_copies(guest, tmp_path)
        backup = service(appliance).create(HOST, "over")
        guest.dom.resume()
        guest.wait_serial("CAIRN: WRITE n=4", timeout=120)   # the disks move on after the backup
        restores = LibvirtRestoreService(appliance.store, appliance.hosts)
        before = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        images = sorted(p.name for p in guest.workdir.iterdir())

        with pytest.raises(Exception, match="stop it first"):
            restores.over_domain(HOST, backup.manifest.backup_id)
        # A restore that fails half-way changes nothing: same definition, same files, nothing left.
        with pytest.raises(RuntimeError, match="half-way"):
            restores.over_domain(HOST, backup.manifest.backup_id, stop=True, progress=stop_in_the_middle)
        assert guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
        assert sorted(p.name for p in guest.workdir.iterdir()) == images
        assert guest.checkpoints() == [backup.manifest.checkpoint]

        done = restores.over_domain(HOST, backup.manifest.backup_id)
        for disk, path in done.disks.items():
            assert same_content(refs[disk], Path(path), "qcow2" if disk == "vda" else "raw"), disk
            assert not guest.files[disk].exists()   # the replaced image is gone
        assert done.notes == [f"dropped libvirt's checkpoint {backup.manifest.checkpoint}: they described the "
                              "replaced images"]
        guest.serial_log.write_text("")
        guest.dom.create()
        guest.wait_serial("CAIRN: READY")
        # The domain opens other images now: the next backup reads them in full and says why.
        after = service(appliance).create(HOST, "over")
        assert after.manifest.kind == "full", after.notes
        assert any(n.startswith(f"vda: checkpoint {backup.manifest.checkpoint} was made on {guest.files['vda']}")
                   for n in after.notes), after.notes
