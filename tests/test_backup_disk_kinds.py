"""Cairn's own VMs on every disk kind: a qcow2 file, a raw file, a raw block device (a loop
device) and a qcow2 image whose data lives in a raw data file, the guest writing to all. While
the VM runs its QEMU keeps a dirty bitmap for the raw disks too (in memory: a raw image cannot
store one), so they are read incrementally; a restart loses it, and the next backup reads them
in full and says why. Per-disk selection leaves disks out and says so. Each backup is compared
byte for byte with copies taken while paused."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from backup_helpers import reference_copy, run, same_content, wait_serial
from guest.harness import MiB

from appliance.backups.selection import DiskSelection
from appliance.backups.service import BackupOptions, BackupResult
from appliance.context import Appliance
from appliance.errors import ConflictError
from appliance.vms.records import VMRecord
from restore import restore_disk
from vmm import DiskSpec, VMSpec, create_disk

VM = "kinds"
DISKS = ["vda", "vdb", "vdc", "vdd"]


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / "vdc.img"
    with backing.open("wb") as f:
        f.truncate(256 * MiB)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
                            text=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "--detach", device], check=False)


def define(appliance: Appliance, guest_kernel, disks: list[DiskSpec]) -> None:
    spec = VMSpec(VM, disks=disks, kernel=str(guest_kernel.kernel), initrd=str(guest_kernel.initrd),
                  append="console=ttyS0 quiet cairn.mode=writer cairn.writes=1000 cairn.interval=1 "
                         "cairn.writedisks=vda,vdb,vdc,vdd")
    spec.validate()
    with appliance.catalog.begin() as s:
        s.add(VMRecord(name=VM, spec=spec.to_dict()))


def start(appliance: Appliance) -> None:
    (appliance.settings.run_dir / VM / "serial.log").unlink(missing_ok=True)
    run(appliance.vms.start(VM))
    wait_serial(appliance, VM, "CAIRN: WRITE n=1")


def writes(appliance: Appliance) -> int:
    return (appliance.settings.run_dir / VM / "serial.log").read_text(errors="replace").count("CAIRN: WRITE n=")


def paused_backup(appliance: Appliance, refdir: Path, disks: list[str] = DISKS,
                  selection: DiskSelection | None = None) -> BackupResult:
    wait_serial(appliance, VM, f"CAIRN: WRITE n={writes(appliance) + 1}")   # new writes to find

    async def body() -> BackupResult:
        async with appliance.driver.session(VM) as s:
            await s.execute("stop")
            for d in disks:
                await reference_copy(s, d, refdir / f"{d}.raw", refdir / "ref.sock")
        try:
            return await appliance.backups.create(appliance.vms.spec(VM), options=BackupOptions(disks=selection or DiskSelection()))
        finally:
            async with appliance.driver.session(VM) as s:
                await s.execute("cont")

    return run(body())


def assert_restores(appliance: Appliance, result: BackupResult, refdir: Path, disks: list[str] = DISKS) -> None:
    assert sorted(d.name for d in result.manifest.disks) == disks
    for d in disks:
        out = refdir / "out.raw"
        restore_disk(appliance.store, result.manifest.backup_id, d, out, fmt="raw")
        assert same_content(refdir / f"{d}.raw", out), f"{result.manifest.backup_id}: {d} differs"
        out.unlink()


def read(result: BackupResult) -> dict[str, int]:
    return {d.name: d.stats.bytes_read for d in result.manifest.disks}


@pytest.mark.slow
def test_raw_and_block_disks_are_incremental_while_qemu_runs(appliance, guest_kernel, loop_device, tmp_path):
    folder = appliance.settings.images_dir / VM
    folder.mkdir(parents=True)
    create_disk(folder / "vda.qcow2", 256 * MiB)
    with (folder / "vdb.raw").open("wb") as f:
        f.truncate(256 * MiB)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={folder / 'vdd.data'},data_file_raw=on",
                    str(folder / "vdd.qcow2"), str(256 * MiB)], check=True)
    define(appliance, guest_kernel, [DiskSpec("vda", str(folder / "vda.qcow2")),
                                     DiskSpec("vdb", str(folder / "vdb.raw"), "raw"),
                                     DiskSpec("vdc", loop_device, "raw"),
                                     DiskSpec("vdd", str(folder / "vdd.qcow2"))])
    start(appliance)

    full = paused_backup(appliance, tmp_path)
    assert full.manifest.kind == "full" and full.notes == [], full.notes
    assert_restores(appliance, full, tmp_path)

    # The running QEMU keeps the raw disks' bitmaps: all of them are read incrementally.
    inc = paused_backup(appliance, tmp_path)
    assert inc.manifest.kind == "incremental" and inc.notes == [], inc.notes
    assert all(p.since for p in inc.points), inc.points
    assert all(n <= 8 * MiB for n in read(inc).values()) and read(inc)["vdc"] < read(full)["vdc"], read(inc)
    assert_restores(appliance, inc, tmp_path)

    # A restart loses them: vdb and vdc are read in full and say why; the qcow2 disks (the one
    # with a data file too) keep theirs in the image and stay incremental.
    run(appliance.vms.stop(VM, force=True))
    start(appliance)
    after = paused_backup(appliance, tmp_path)
    assert after.manifest.kind == "incremental"
    assert [p.disk for p in after.points if p.since] == ["vda", "vdd"]
    for d in ("vdb", "vdc"):
        assert any(n.startswith(f"{d}: raw image: its checkpoint bitmap {inc.manifest.checkpoint} lived only in "
                                "the QEMU that ran the VM then") for n in after.notes), after.notes
    assert_restores(appliance, after, tmp_path)

    # Disks left out by the selection are not read, and the backup says so; back in, a disk
    # the parent does not have is read in full.
    partial = paused_backup(appliance, tmp_path, ["vda", "vdb", "vdd"], DiskSelection(exclude=("kind:block",)))
    assert partial.manifest.kind == "incremental"
    assert [p.disk for p in partial.points if p.since] == ["vda", "vdb", "vdd"]
    assert partial.notes == ["vdc: left out: excluded (kind:block)"]
    assert_restores(appliance, partial, tmp_path, ["vda", "vdb", "vdd"])
    whole = paused_backup(appliance, tmp_path)
    # (vdc's bitmap of the backup before `partial` was left alone while it was out: it goes now)
    assert whole.notes == [f"vdc: new disk since backup {partial.manifest.backup_id}; full read",
                           f"vdc: removed orphan checkpoint bitmaps ({after.manifest.checkpoint})"], whole.notes
    assert_restores(appliance, whole, tmp_path)

    with pytest.raises(ConflictError, match="no disk to back up"):
        run(appliance.backups.create(appliance.vms.spec(VM), options=BackupOptions(
            disks=DiskSelection(include=("kind:network",)))))

    # Stopped: qemu-nbd reads the images, and nothing keeps a bitmap for the raw ones.
    run(appliance.vms.stop(VM, force=True))
    offline = run(appliance.backups.create(appliance.vms.spec(VM)))
    assert [p.disk for p in offline.points if p.since] == ["vda", "vdd"]
    assert any(n.startswith("vdb is raw: no dirty bitmap is stored in it") for n in offline.notes), offline.notes
