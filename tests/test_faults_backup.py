"""Backups under faults: the Cairn process, QEMU, qemu-nbd or the NBD connection dies while a
backup copies. Each time the backup fails and leaves no backup in the store, nothing runs or
lies around once Cairn starts again, and the next backup sees every write since the last good
one and restores byte-exact.

The VMs run no guest OS (QEMU's block layer is all a backup reads); writes go through it with
HMP qemu-io. A backup is held mid-copy by its first progress report with data read (a pause
point), so the fault lands there every time: the reader has at most 4 MiB in flight then (16
requests of 256 KiB, transports/nbd_source.py), and each backup that fails has 24 MiB to read.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from backup_helpers import (
    MiB,
    image_bitmaps,
    image_to_raw,
    reference_copy,
    root_node,
    run,
    same_content,
)
from fault_helpers import Pause, forked, helpers_naming, processes_naming
from test_helper_processes import cairn

from appliance.backups.options import BackupOptions
from appliance.context import Appliance
from restore import restore_disk

A = (0x41, 0, 8 * MiB)             # before the first backup
B = (0x42, 4 * MiB, 24 * MiB)      # between the first backup and the one that fails
C = (0x43, 30 * MiB, 1 * MiB)      # after it


async def write(appliance: Appliance, vm: str, pattern: tuple[int, int, int]) -> None:
    """Write and flush through QEMU, as a guest does before it counts data as safe."""
    byte, offset, length = pattern
    async with appliance.driver.session(vm) as s:
        node = await root_node(s, "vda")
        await s.qemu_io(node, f"write -P {byte:#x} {offset} {length}")
        await s.qemu_io(node, "flush")


def running_vm(appliance: Appliance, name: str) -> str:
    """A running VM with A on its disk and a first backup (whose checkpoint the next one uses)."""
    appliance.vms.create(name, [32 * MiB])
    run(appliance.vms.start(name))
    run(write(appliance, name, A))
    run(appliance.backups.create(appliance.vms.spec(name)))
    run(write(appliance, name, B))
    return name


def nothing_left(appliance: Appliance, temp: Path, vm: str, backups_before: int) -> None:
    """What a failed backup must leave: no backup, its record failed, no helper, no file."""
    assert len(appliance.store.list_backups(vm)) == backups_before
    failed = [b for b in appliance.backups.list(vm) if b.status != "ok"]
    assert len(failed) == 1 and failed[0].status == "failed", failed
    assert helpers_naming(str(appliance.settings.data_dir)) == []
    assert list(appliance.settings.scratch_dir.iterdir()) == [] and list(temp.iterdir()) == []


def next_backup_is_whole(appliance: Appliance, vm: str, tmp_path: Path, kind: str) -> None:
    """The next backup of the running VM: of `kind`, equal to the disk at its instant (the VM
    paused meanwhile; the reference is copied after the backup, which first removes what the
    failed one left in QEMU, its NBD server among it)."""
    run(write(appliance, vm, C))
    run(appliance.driver.pause(vm))
    after = run(appliance.backups.create(appliance.vms.spec(vm))).manifest

    async def reference() -> None:
        async with appliance.driver.session(vm) as s:
            await reference_copy(s, "vda", tmp_path / "ref.raw", tmp_path / "ref.sock")
    run(reference())
    run(appliance.driver.resume(vm))
    assert after.kind == kind, after.notes
    restore_disk(appliance.store, after.backup_id, "vda", tmp_path / "after.raw")
    assert same_content(tmp_path / "ref.raw", tmp_path / "after.raw")


@pytest.mark.parametrize("transport", ["pull", "push"])
def test_a_live_backup_killed_mid_copy_leaves_nothing_once_cairn_starts_again(
        appliance: Appliance, appliance_data_dir: Path, private_tmp: Path, tmp_path: Path, transport: str):
    """kill -9 of the backing-up Cairn process mid-copy: the next start (any `cairn` command)
    sweeps its helpers, scratch overlays or targets and socket directories; QEMU keeps its
    export until the next backup, which removes it, folds the frozen checkpoint back in, stays
    incremental and restores byte-exact. `snapshot check` works meanwhile. (The fleecing export's
    socket directory and scratch overlays stayed for ever; `snapshot check` failed with an
    internal KeyError on the copy-before-write filter left on the disk.)"""
    vm = running_vm(appliance, f"killed{transport}")

    def back_up(app: Appliance, pause: Pause) -> None:
        def report(disk: str, done: int, total: int) -> None:
            if done > 0:
                pause(f"{disk} {done}/{total}")
        run(app.backups.create(app.vms.spec(vm), options=BackupOptions(transport=transport), progress=report))
    child = forked(appliance_data_dir, back_up)
    try:
        assert child.kill_when_paused(), child.output
    finally:
        if child.code is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    cairn(appliance_data_dir, "vm", "list")          # the next start of Cairn
    nothing_left(appliance, private_tmp, vm, backups_before=1)
    assert run(appliance.snapshots.check(vm)).problems == []

    next_backup_is_whole(appliance, vm, tmp_path, "incremental")
    run(appliance.snapshots.create(vm, "after"))
    assert run(appliance.snapshots.check(vm)).problems == []
    run(appliance.vms.stop(vm, timeout=5, force=True))


class PausedCopy:
    """A backup run in a thread of the test, held at its first progress report with data read
    until release(); its error, if it fails."""

    def __init__(self, appliance: Appliance, vm: str, options: BackupOptions = BackupOptions()):
        self.paused, self.go_on = threading.Event(), threading.Event()
        self.error: BaseException | None = None

        def report(disk: str, done: int, total: int) -> None:
            if done > 0 and not self.paused.is_set():
                self.paused.set()
                self.go_on.wait()

        def back_up() -> None:
            try:
                run(appliance.backups.create(appliance.vms.spec(vm), options=options, progress=report))
            except BaseException as err:
                self.error = err
        self.thread = threading.Thread(target=back_up)
        self.thread.start()
        assert self.paused.wait(120), "the backup never reported its copy"

    def release(self) -> BaseException | None:
        self.go_on.set()
        self.thread.join(120)
        return self.error


def test_qemu_killed_mid_backup_fails_it_and_the_next_one_reads_in_full(appliance: Appliance, private_tmp: Path,
                                                                           tmp_path: Path):
    """The backup cannot close its export in QEMU: what it holds on this side goes all the same
    (the fleecing export's socket directory stayed for as long as the backing-up process lived:
    for ever, in `cairn serve`)."""
    vm = running_vm(appliance, "qemudies")
    copy = PausedCopy(appliance, vm)
    os.kill(appliance.driver.status(vm).pid, signal.SIGKILL)
    assert copy.release() is not None, "the backup survived QEMU's death"
    nothing_left(appliance, private_tmp, vm, backups_before=1)

    run(appliance.vms.start(vm))                     # QEMU's in-memory bitmaps died with it
    next_backup_is_whole(appliance, vm, tmp_path, "full")
    run(appliance.vms.stop(vm, timeout=5, force=True))


def test_qemu_killed_after_a_push_copied_leaves_nothing_on_this_side(appliance: Appliance, private_tmp: Path,
                                                                      tmp_path: Path):
    """In push mode QEMU has written the instant into targets here before they are read: QEMU
    killed then, the backup reads on from them, but cannot close the export in QEMU. The
    targets' readers (qemu-nbd) and files go all the same (they stayed for as long as the
    backing-up process lived), and the next backup reads in full and restores byte-exact."""
    vm = running_vm(appliance, "pushdies")
    copy = PausedCopy(appliance, vm, BackupOptions(transport="push"))
    os.kill(appliance.driver.status(vm).pid, signal.SIGKILL)
    assert copy.release() is not None
    assert helpers_naming(str(appliance.settings.data_dir)) == []
    assert list(appliance.settings.scratch_dir.iterdir()) == [] and list(private_tmp.iterdir()) == []

    run(appliance.vms.start(vm))
    next_backup_is_whole(appliance, vm, tmp_path, "full")
    run(appliance.vms.stop(vm, timeout=5, force=True))


def test_a_push_backup_whose_qemu_died_after_the_copy_is_in_the_store_only_if_recorded_ok(appliance: Appliance,
                                                                                         private_tmp: Path):
    vm = running_vm(appliance, "pushrecord")
    copy = PausedCopy(appliance, vm, BackupOptions(transport="push"))
    os.kill(appliance.driver.status(vm).pid, signal.SIGKILL)
    copy.release()
    ok = {b.id for b in appliance.backups.list(vm) if b.status == "ok"}
    assert {m.backup_id for m in appliance.store.list_backups(vm)} == ok


def test_qemu_nbd_killed_mid_backup_of_a_stopped_vm_fails_it_and_keeps_the_checkpoint(appliance: Appliance,
                                                                                        private_tmp: Path,
                                                                                        tmp_path: Path):
    vm = running_vm(appliance, "nbddies")
    run(appliance.vms.stop(vm, timeout=5, force=True))
    disk = appliance.vms.spec(vm).disks[0].path
    [checkpoint] = image_bitmaps(disk)
    copy = PausedCopy(appliance, vm)
    [(server, _)] = processes_naming(disk, "qemu-nbd")
    os.kill(server, signal.SIGKILL)
    assert copy.release() is not None, "the backup survived its qemu-nbd's death"
    nothing_left(appliance, private_tmp, vm, backups_before=1)
    assert image_bitmaps(disk) == [checkpoint]       # the base of the next incremental, intact

    after = run(appliance.backups.create(appliance.vms.spec(vm))).manifest
    assert after.kind == "incremental", after.notes
    restore_disk(appliance.store, after.backup_id, "vda", tmp_path / "after.raw")
    assert same_content(image_to_raw(disk, tmp_path / "disk.raw"), tmp_path / "after.raw")


def test_a_cut_nbd_connection_fails_the_backup_and_the_next_one_repairs(appliance: Appliance, private_tmp: Path,
                                                                       tmp_path: Path):
    """QEMU's NBD server drops the reading connection mid-copy (the export removed by force)."""
    vm = running_vm(appliance, "cut")
    copy = PausedCopy(appliance, vm)

    async def cut() -> None:
        async with appliance.driver.session(vm) as s:
            for export in await s.execute("query-block-exports"):
                await s.execute("block-export-del", {"id": export["id"], "mode": "hard"})
    run(cut())
    assert copy.release() is not None, "the backup read on from a cut connection"
    nothing_left(appliance, private_tmp, vm, backups_before=1)

    next_backup_is_whole(appliance, vm, tmp_path, "incremental")
    run(appliance.vms.stop(vm, timeout=5, force=True))


def test_snapshots_of_a_vm_whose_live_backup_was_killed_work_once_cairn_starts_again(
        appliance: Appliance, appliance_data_dir: Path, private_tmp: Path, tmp_path: Path):
    """The snapshot clears what the dead backup left in QEMU and folds its frozen checkpoint
    back in: the next backup, on the snapshot's new layer, stays incremental and byte-exact."""
    vm = running_vm(appliance, "snapafter")

    def back_up(app: Appliance, pause: Pause) -> None:
        run(app.backups.create(app.vms.spec(vm), progress=lambda disk, done, total: pause(disk)))
    assert forked(appliance_data_dir, back_up).kill_when_paused()
    cairn(appliance_data_dir, "vm", "list")
    try:
        run(appliance.snapshots.create(vm, "s1"))
        assert run(appliance.snapshots.check(vm)).problems == []
        next_backup_is_whole(appliance, vm, tmp_path, "incremental")
    finally:
        run(appliance.vms.stop(vm, timeout=5, force=True))
