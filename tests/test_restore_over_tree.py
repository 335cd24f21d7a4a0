"""Restore over a VM that has a snapshot tree, with real QEMU, running (with a memory snapshot)
and stopped: the restored disks become the new root, the old layers and memory states go once
the swap is committed (also when the restoring process dies right after it), and everything
after it works and is right: snapshot, revert, delete, full and incremental backups, each backup
restoring byte for byte to what the disks held at its instant, nothing orphaned in the folder."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from backup_helpers import MiB, paused_backup_with_reference, run
from restore_helpers import same_image
from snapshot_helpers import qemu_io_write
from test_snapshot_crash import write_flushed

from appliance.context import Appliance
from dedup import BackupManifest
from restore import restore_disk

DISKS = [4 * MiB, 2 * MiB]
# One pattern per step, each on its own 256 KiB of both disks: every point differs from the others.
STEPS = "ABCDEFGH"


def write(appliance: Appliance, vm: str, step: str) -> None:
    pattern, offset = 0x40 + STEPS.index(step), STEPS.index(step) * 256 * 1024
    for disk in appliance.vms.spec(vm).disks:
        if running(appliance, vm):
            run(write_flushed(appliance, vm, disk.name, pattern, offset, 256 * 1024))
        else:
            qemu_io_write(disk.path, pattern, offset, 256 * 1024)


def running(appliance: Appliance, vm: str) -> bool:
    return appliance.driver.status(vm).state in ("running", "paused")


def backup(appliance: Appliance, vm: str, refs: dict[str, dict[str, Path]], tmp_path: Path) -> BackupManifest:
    """A backup and, beside it, raw copies of the disks at its instant."""
    refdir = tmp_path / f"ref{len(refs)}"
    refdir.mkdir()
    disks = [d.name for d in appliance.vms.spec(vm).disks]
    if running(appliance, vm):
        manifest = run(paused_backup_with_reference(appliance, vm, disks, refdir))
    else:
        manifest = run(appliance.backups.create(appliance.vms.spec(vm))).manifest
        for disk in appliance.vms.spec(vm).disks:
            subprocess.run(["qemu-img", "convert", "-O", "raw", disk.path, str(refdir / f"{disk.name}.raw")],
                           check=True)
    refs[manifest.backup_id] = {d: refdir / f"{d}.raw" for d in disks}
    return manifest


def assert_each_backup_restores_exactly(appliance: Appliance, refs: dict[str, dict[str, Path]], tmp_path: Path):
    for backup_id, disks in refs.items():
        for disk, ref in disks.items():
            out = tmp_path / f"{backup_id}-{disk}.out.raw"
            restore_disk(appliance.store, backup_id, disk, out)
            assert same_image(ref, out), (backup_id, disk)


def assert_nothing_orphaned(appliance: Appliance, vm: str) -> None:
    """The VM's folder holds exactly its layers and its snapshots' memory states."""
    tree = appliance.snapshots.tree(vm)
    expected = {n.file for n in tree.nodes.values()} | {s.memory for s in tree.snapshots.values() if s.memory}
    folder = appliance.settings.images_dir / vm
    assert {str(p) for p in folder.iterdir()} == expected


def vm_with_a_tree(appliance: Appliance, vm: str, live: bool, refs, tmp_path: Path) -> BackupManifest:
    """Point A backed up, then B, snapshot s1 (with memory if live), C, snapshot s2, D."""
    appliance.vms.create(vm, DISKS)
    write(appliance, vm, "A")
    first = backup(appliance, vm, refs, tmp_path)
    if live:
        run(appliance.vms.start(vm))
    write(appliance, vm, "B")
    run(appliance.snapshots.create(vm, "s1", memory=live))
    write(appliance, vm, "C")
    run(appliance.snapshots.create(vm, "s2"))
    write(appliance, vm, "D")
    return first


@pytest.mark.parametrize("live", [False, True], ids=["stopped", "running"])
def test_restore_over_a_vm_with_snapshots_then_everything_after_it(appliance: Appliance, tmp_path: Path,
                                                                   live: bool):
    vm, refs = "tree", {}
    first = vm_with_a_tree(appliance, vm, live, refs, tmp_path)
    old_files = {str(p) for p in (appliance.settings.images_dir / vm).iterdir()}
    assert any(f.endswith(".vmstate") for f in old_files) == live

    restored = run(appliance.restores.over_vm(first.backup_id, vm, stop=True))
    assert not running(appliance, vm)
    tree = appliance.snapshots.tree(vm)
    assert tree.snapshots == {} and appliance.snapshots.interrupted(vm) is None
    assert {d: tree.active(d).file for d in tree.disks()} == restored.disks      # the new root
    assert old_files.isdisjoint(p.as_posix() for p in (appliance.settings.images_dir / vm).iterdir())
    assert_nothing_orphaned(appliance, vm)
    for disk, path in restored.disks.items():
        assert same_image(refs[first.backup_id][disk], path)

    if live:
        run(appliance.vms.start(vm))
    write(appliance, vm, "E")
    after = backup(appliance, vm, refs, tmp_path)       # the restored disks have no checkpoint bitmaps
    assert after.kind == "full", after
    for disk in ("vda", "vdb"):
        assert any(n.startswith(f"{disk}:") and "restored" in n and "full read" in n for n in after.notes), after.notes
    run(appliance.snapshots.create(vm, "t1", memory=live))
    write(appliance, vm, "F")
    incremental = backup(appliance, vm, refs, tmp_path)
    assert incremental.kind == "incremental" and incremental.notes == (), incremental
    run(appliance.snapshots.create(vm, "t2"))
    write(appliance, vm, "G")
    run(appliance.snapshots.revert(vm, "t1"))           # running: resumes from t1's memory
    assert running(appliance, vm) == live
    run(appliance.snapshots.delete(vm, "t2"))
    reverted = backup(appliance, vm, refs, tmp_path)    # the checkpoint was on the layer the revert left
    assert reverted.kind == "full" and reverted.notes, reverted
    write(appliance, vm, "H")
    assert backup(appliance, vm, refs, tmp_path).kind == "incremental"
    if live:
        run(appliance.vms.stop(vm, timeout=5, force=True))
    assert run(appliance.snapshots.check(vm)).problems == []
    assert_each_backup_restores_exactly(appliance, refs, tmp_path)
    assert_nothing_orphaned(appliance, vm)


# A restoring process that dies (no cleanup runs) when it is about to remove the first old file.
RESTORE_THEN_DIE = """
import asyncio, os, sys
from pathlib import Path
from appliance.context import Appliance
data_dir, backup_id, vm, *old_files = sys.argv[1:]
unlink = Path.unlink
def die_on_an_old_file(path, missing_ok=False):
    if str(path) in old_files:
        os._exit(17)
    unlink(path, missing_ok=missing_ok)
Path.unlink = die_on_an_old_file
asyncio.run(Appliance.open(data_dir).restores.over_vm(backup_id, vm))
"""


def test_a_restore_killed_right_after_its_swap_leaves_nothing_behind(appliance: Appliance,
                                                                      appliance_data_dir: Path, tmp_path: Path):
    """The swap is committed, then the process dies before it removes a single old file: the
    next snapshot operation on the VM (here the check) removes them."""
    vm, refs = "killed", {}
    first = vm_with_a_tree(appliance, vm, True, refs, tmp_path)
    run(appliance.vms.stop(vm, timeout=5, force=True))
    old_files = {str(p) for p in (appliance.settings.images_dir / vm).iterdir()}
    restore = subprocess.run([sys.executable, "-c", RESTORE_THEN_DIE, str(appliance_data_dir), first.backup_id, vm,
                              *sorted(old_files)], check=False, capture_output=True, text=True)
    assert restore.returncode == 17, restore.stderr
    assert appliance.snapshots.tree(vm).snapshots == {}           # the swap was committed
    run(appliance.snapshots.check(vm))
    assert_nothing_orphaned(appliance, vm)
    for disk in appliance.vms.spec(vm).disks:
        assert same_image(refs[first.backup_id][disk.name], disk.path)
