"""A VM on the legacy OS profile (IDE disks, whose query-block entries name the device itself
rather than a virtio backend path) is snapshotted and backed up like any other."""
from __future__ import annotations

from pathlib import Path

from backup_helpers import MiB, paused_backup_with_reference, run, same_content, write_pattern

from appliance.context import Appliance
from appliance.vms.service import VMOptions
from restore import restore_disk


def test_legacy_profile_vm_snapshot_and_incremental_backup_restore_byte_exact(appliance: Appliance, guest_kernel,
                                                                              tmp_path: Path):
    appliance.vms.create("old", [64 * MiB], kernel=str(guest_kernel.kernel), initrd=str(guest_kernel.initrd),
                         append="console=ttyS0 quiet cairn.mode=idle", options=VMOptions(profile="legacy"))
    run(appliance.vms.start("old"))
    # The test guest has no IDE driver in its initramfs: the data is written through QEMU.
    run(write_pattern(appliance, "old", "vda", 0x5A, 4 * MiB, MiB))
    run(appliance.snapshots.create("old", "before-upgrade"))
    run(write_pattern(appliance, "old", "vda", 0x5B, 8 * MiB, MiB))

    full = run(paused_backup_with_reference(appliance, "old", ["vda"], tmp_path))
    run(write_pattern(appliance, "old", "vda", 0x5C, 20 * MiB, MiB))
    incremental = run(paused_backup_with_reference(appliance, "old", ["vda"], tmp_path))

    assert (full.kind, incremental.kind) == ("full", "incremental")
    assert incremental.disks[0].stats.bytes_read <= 4 * MiB, "only the chunk written since is read"
    restore_disk(appliance.store, incremental.backup_id, "vda", tmp_path / "out.raw")
    assert same_content(tmp_path / "vda.raw", tmp_path / "out.raw")
    assert len(appliance.snapshots.tree("old").snapshots) == 1
