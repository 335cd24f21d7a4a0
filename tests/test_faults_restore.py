"""Restores and clones killed half-way: the VM keeps what it had, and once Cairn starts again
nothing of the dead operation is left. (test_restore_vm.py and test_helper_processes.py prove
the old disks stay and the helpers go; these look at the files.)"""
from __future__ import annotations

import pytest
from backup_helpers import MiB, run
from fault_helpers import Pause, die, forked
from snapshot_helpers import has_pattern, qemu_io_write
from test_helper_processes import cairn

import vmm.clone
from appliance.context import Appliance
from appliance.errors import NotFoundError

A = (0x51, 0, 1 * MiB)


def restore_killed_in(disk: str, backup_id: str, vm: str):
    def work(app: Appliance, pause: Pause) -> None:
        def report(name: str, done: int, total: int) -> None:
            if name == disk:
                pause(f"{name} {done}/{total}")
        run(app.restores.over_vm(backup_id, vm, progress=report))
    return work


@pytest.mark.parametrize("disk", ["vda", "vdb"])
def test_a_restore_over_killed_in_a_disk_keeps_the_old_disks(appliance: Appliance, appliance_data_dir, disk: str):
    spec = appliance.vms.create("two", [2 * MiB, 2 * MiB])
    backup_id = run(appliance.backups.create(spec)).manifest.backup_id
    for d in spec.disks:
        qemu_io_write(d.path, *A)
    assert forked(appliance_data_dir, restore_killed_in(disk, backup_id, "two")).kill_when_paused()
    cairn(appliance_data_dir, "vm", "list")                # the next start of Cairn
    assert [d.path for d in appliance.vms.spec("two").disks] == [d.path for d in spec.disks]
    assert all(has_pattern(d.path, *A) for d in spec.disks)
    assert not list((appliance.settings.images_dir / "two").glob(".*.cairn-partial"))


def test_a_restore_over_killed_after_its_first_disk_leaves_no_file_once_cairn_starts_again(appliance: Appliance,
                                                                                            appliance_data_dir):
    spec = appliance.vms.create("two", [2 * MiB, 2 * MiB])
    backup_id = run(appliance.backups.create(spec)).manifest.backup_id
    assert forked(appliance_data_dir, restore_killed_in("vdb", backup_id, "two")).kill_when_paused()
    cairn(appliance_data_dir, "vm", "list")
    assert sorted(p.name for p in (appliance.settings.images_dir / "two").iterdir()) == ["vda.qcow2", "vdb.qcow2"]


def test_a_clone_killed_half_way_leaves_no_folder_and_the_name_free(appliance: Appliance, appliance_data_dir):
    appliance.vms.create("src", [2 * MiB, 2 * MiB])

    def work(app: Appliance, pause: Pause) -> None:
        copied = []
        convert = vmm.clone.convert_image

        def convert_then_die(source, target, *args, **kwargs):
            convert(source, target, *args, **kwargs)
            copied.append(target)
            if len(copied) == 1:
                die()
        vmm.clone.convert_image = convert_then_die
        app.vms.clone("src", ["copy"])
    forked(appliance_data_dir, work).wait()
    cairn(appliance_data_dir, "vm", "list")
    with pytest.raises(NotFoundError):
        appliance.vms.spec("copy")
    assert not (appliance.settings.images_dir / "copy").exists()
    appliance.vms.clone("src", ["copy"])
