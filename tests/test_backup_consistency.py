"""Multi-disk consistency: all disks of a backup are from one instant.

The guest writes an ever-growing sequence number to vda and then to vdb, without pause. Disks
read at one instant show vda = vdb or vda = vdb + 1; disks frozen one after the other while
the guest runs would show vda ahead by more."""
from __future__ import annotations

import re
import time
from pathlib import Path

from backup_helpers import MiB, boot_guest_vm, run, wait_serial

from appliance.backups.options import BackupOptions
from appliance.context import Appliance
from restore import restore_disk

SEQ_OFFSET = 2 * MiB


def sequence_number(raw: Path) -> int:
    with open(raw, "rb") as f:
        f.seek(SEQ_OFFSET)
        found = re.match(rb"CAIRN-SEQ (\d+)", f.read(64))
    assert found, f"no sequence number at {SEQ_OFFSET} of {raw}"
    return int(found.group(1))


def test_both_disks_of_a_busy_guest_are_restored_from_the_same_instant(appliance: Appliance, guest_kernel,
                                                                       tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "busy", [128 * MiB, 32 * MiB], append="cairn.mode=seqwriter")
    spec = appliance.vms.spec("busy")
    try:
        wait_serial(appliance, "busy", "CAIRN: SEQWRITER")
        seen = []
        for transport in ("pull", "pull", "push"):
            time.sleep(1)   # let it write a while
            manifest = run(appliance.backups.create(spec, options=BackupOptions(transport=transport))).manifest
            numbers = {}
            for disk in ("vda", "vdb"):
                raw = tmp_path / f"{manifest.backup_id}-{disk}.raw"
                restore_disk(appliance.store, manifest.backup_id, disk, raw)
                numbers[disk] = sequence_number(raw)
            assert numbers["vda"] - numbers["vdb"] in (0, 1), (transport, numbers)
            seen.append(numbers["vdb"])
        assert seen == sorted(seen) and seen[0] < seen[-1], seen    # the guest kept writing throughout
    finally:
        run(appliance.vms.stop("busy", timeout=5, force=True))
