"""Whole-VM restore in the appliance: as a new VM, and over the existing VM all or nothing."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from backup_helpers import CHUNK, MiB, boot_guest_vm, run, wait_serial
from restore_helpers import same_image
from store_helpers import block_ids, block_pack, flip_byte

from appliance.errors import ConflictError
from restore import CorruptBackupError

SIZES = [3 * CHUNK, 2 * CHUNK]


def qemu_io(path: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, path], check=True, capture_output=True)


def as_raw(path: str, target: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, str(target)], check=True, capture_output=True)
    return target


@pytest.fixture
def backed_up(appliance, tmp_path):
    """A stopped VM with data on both disks, backed up; returns (backup id, raw copies of its disks
    at backup time). Afterwards the disks are changed, so a restore has something to undo."""
    spec = appliance.vms.create("web1", SIZES, memory_mib=192, vcpus=2)
    paths = {d.name: d.path for d in spec.disks}
    qemu_io(paths["vda"], f"write -P 0x11 0 {CHUNK + MiB}")
    qemu_io(paths["vdb"], f"write -P 0x22 {CHUNK} {MiB}")
    manifest = run(appliance.backups.create(spec)).manifest
    at_backup = {name: as_raw(path, tmp_path / f"{name}.raw") for name, path in paths.items()}
    for path in paths.values():
        qemu_io(path, f"write -P 0x99 0 {2 * MiB}")
    return manifest.backup_id, at_backup


def test_restore_as_new_vm(appliance, backed_up):
    backup_id, at_backup = backed_up
    result = appliance.restores.as_new_vm(backup_id, "web1-copy", verify=True)
    assert result.verified
    copy = appliance.vms.spec("web1-copy")
    assert (copy.memory_mib, copy.vcpus, [d.name for d in copy.disks]) == (192, 2, ["vda", "vdb"])
    for disk in copy.disks:
        assert same_image(at_backup[disk.name], disk.path)
    assert appliance.vms.spec("web1").disks[0].path != copy.disks[0].path
    with pytest.raises(ConflictError, match="already exists"):
        appliance.restores.as_new_vm(backup_id, "web1-copy")


def test_restore_over_vm_swaps_all_disks(appliance, backed_up):
    backup_id, at_backup = backed_up
    old = {d.name: d.path for d in appliance.vms.spec("web1").disks}
    result = run(appliance.restores.over_vm(backup_id, "web1", verify=True))
    now = {d.name: d.path for d in appliance.vms.spec("web1").disks}
    assert now == result.disks and set(now.values()).isdisjoint(old.values())
    for name, path in now.items():
        assert same_image(at_backup[name], path)
    folder = appliance.settings.images_dir / "web1"
    assert sorted(str(p) for p in folder.iterdir()) == sorted(now.values())


def test_interrupted_restore_over_vm_leaves_old_disks(appliance, backed_up, tmp_path):
    backup_id, _ = backed_up
    spec = appliance.vms.spec("web1")
    before = {d.name: as_raw(d.path, tmp_path / f"before-{d.name}.raw") for d in spec.disks}
    folder_before = sorted((appliance.settings.images_dir / "web1").iterdir())
    # Damage a block only vdb uses: vda restores completely, then vdb fails half-way.
    store = appliance.store
    manifest = store.get_backup(backup_id)
    vda_blocks = set(block_ids(store, manifest, "vda"))
    bad = next(b for b in block_ids(store, manifest, "vdb") if b not in vda_blocks)
    flip_byte(block_pack(store, bad), offset=store.blocks.locate(bad)[1].offset + 20)
    with pytest.raises(CorruptBackupError, match="disk vdb"):
        run(appliance.restores.over_vm(backup_id, "web1"))
    after = appliance.vms.spec("web1")
    assert [d.path for d in after.disks] == [d.path for d in spec.disks]
    for disk in after.disks:
        assert same_image(before[disk.name], disk.path)
    assert sorted((appliance.settings.images_dir / "web1").iterdir()) == folder_before


def test_restore_over_a_different_vm_is_refused(appliance, backed_up):
    backup_id, _ = backed_up
    appliance.vms.create("other", [CHUNK])
    with pytest.raises(ConflictError, match="restore it as a new VM"):
        run(appliance.restores.over_vm(backup_id, "other"))


def test_restore_over_running_guest_stops_it_first(appliance, guest_kernel, tmp_path):
    boot_guest_vm(appliance, guest_kernel, "g1", [128 * MiB])
    spec = appliance.vms.spec("g1")
    backup_id = run(appliance.backups.create(spec)).manifest.backup_id
    with pytest.raises(ConflictError, match="stop it first"):
        run(appliance.restores.over_vm(backup_id, "g1"))
    run(appliance.restores.over_vm(backup_id, "g1", stop=True, verify=True))
    assert appliance.vms.show("g1").status.state == "stopped"
    log = appliance.settings.run_dir / "g1" / "serial.log"
    log.unlink()
    run(appliance.vms.start("g1"))
    wait_serial(appliance, "g1", "CAIRN: READY", timeout=180)


# The restoring process: restores over the VM and, at the first progress report of vdb (a
# pause point: vda is complete, vdb partly written), says so and waits there until it is killed.
RESTORE_UNTIL_KILLED = """
import asyncio, sys, threading
from appliance.context import Appliance
data_dir, backup_id, vm = sys.argv[1:]
def pause_in_vdb(disk, done, total):
    if disk == "vdb" and done > 0:
        print(disk, done, total, flush=True)
        threading.Event().wait()
asyncio.run(Appliance.open(data_dir).restores.over_vm(backup_id, vm, progress=pause_in_vdb))
"""


def test_restore_over_vm_killed_half_way(appliance, appliance_data_dir, tmp_path):
    """The restoring process dies while the second disk is written: the VM keeps its old disks,
    and the next restore over it clears what the dead one left and succeeds."""
    spec = appliance.vms.create("big", [2 * CHUNK, 256 * MiB])
    paths = {d.name: d.path for d in spec.disks}
    qemu_io(paths["vda"], f"write -P 0x11 0 {CHUNK}")
    qemu_io(paths["vdb"], f"write -P 0x22 0 {200 * MiB}")
    backup_id = run(appliance.backups.create(spec)).manifest.backup_id
    qemu_io(paths["vdb"], "write -P 0x99 0 1M")
    before = {name: as_raw(path, tmp_path / f"before-{name}.raw") for name, path in paths.items()}
    folder = appliance.settings.images_dir / "big"
    proc = subprocess.Popen([sys.executable, "-c", RESTORE_UNTIL_KILLED, str(appliance_data_dir), backup_id, "big"],
                            stdout=subprocess.PIPE, text=True)
    try:
        disk, done, total = proc.stdout.readline().split()
        assert disk == "vdb" and 0 < int(done) < int(total), "the restore never paused in vdb"
        assert list(folder.glob(".vdb-restored-*.cairn-partial"))
    finally:
        proc.kill()
        proc.wait()
    assert {d.name: d.path for d in appliance.vms.spec("big").disks} == paths
    for name, path in paths.items():
        assert same_image(before[name], path)
    result = run(appliance.restores.over_vm(backup_id, "big"))
    assert sorted(str(p) for p in folder.iterdir()) == sorted(result.disks.values())
