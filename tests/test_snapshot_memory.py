"""Snapshots with memory state: reverting one resumes the running guest at the instant of the
snapshot, with the disks as they were then. The test guest's writer counts its writes on the
serial console; after the revert the count goes on from where the snapshot caught it, without a
boot."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from backup_helpers import MiB, run, wait_serial

from appliance.context import Appliance
from appliance.errors import ConflictError

WRITES = re.compile(r"CAIRN: WRITE n=(\d+)")


def writes(appliance: Appliance, vm: str) -> list[int]:
    log = appliance.settings.run_dir / vm / "serial.log"
    return [int(n) for n in WRITES.findall(log.read_text(errors="replace"))] if log.exists() else []


def wait_for_write(appliance: Appliance, vm: str, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while max(writes(appliance, vm), default=-1) < at_least:
        assert time.monotonic() < deadline, f"the guest did not get to write {at_least}"
        time.sleep(0.1)


@pytest.mark.slow
def test_revert_with_memory_resumes_the_guest_where_the_snapshot_caught_it(appliance: Appliance, guest_kernel):
    # The writer puts 64 KiB at 200 MiB + n MiB every 0.3 s and prints n.
    appliance.vms.create("mem", [512 * MiB], kernel=str(guest_kernel.kernel), initrd=str(guest_kernel.initrd),
                         append="console=ttyS0 quiet cairn.mode=writer cairn.writes=100000 cairn.interval=0.3")
    run(appliance.vms.start("mem"))
    try:
        wait_for_write(appliance, "mem", 2)
        before = max(writes(appliance, "mem"))
        snap = run(appliance.snapshots.create("mem", "m1", memory=True))
        caught = max(writes(appliance, "mem"))
        assert snap.memory and Path(snap.memory).is_file()
        wait_for_write(appliance, "mem", caught + 5)

        reverted = run(appliance.snapshots.revert("mem", "m1"))
        assert reverted.id == snap.id
        assert appliance.driver.status("mem").state == "running"
        wait_serial(appliance, "mem", "CAIRN: WRITE", timeout=120)
        log = (appliance.settings.run_dir / "mem" / "serial.log").read_text(errors="replace")
        assert "CAIRN: INIT" not in log, "the guest booted instead of resuming"
        resumed_at = writes(appliance, "mem")[0]
        assert before <= resumed_at <= caught + 1, (before, caught, resumed_at)
        assert run(appliance.snapshots.check("mem")).problems == []

        # Disks only, of a running VM: refused; the snapshot's memory goes with it on delete.
        with pytest.raises(ConflictError, match="stop it before reverting"):
            run(appliance.snapshots.revert("mem", "m1", memory=False))
        run(appliance.snapshots.delete("mem", "m1"))
        assert not Path(snap.memory).exists()
    finally:
        run(appliance.vms.stop("mem", timeout=5, force=True))
    with pytest.raises(ConflictError, match="not running: it has no memory state"):
        run(appliance.snapshots.create("mem", "m2", memory=True))
