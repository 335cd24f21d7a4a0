"""Instant restore with the real test guest: it boots from the backup while the data is copied
in, keeps its writes, and the finished disk is the backup plus those writes, also after the
appliance, nbdkit and QEMU all died half-way and the restore was resumed."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from backup_helpers import MiB, boot_guest_vm, run, wait_serial, write_pattern
from restore_helpers import same_image

from appliance.context import Appliance
from restore import restore_disk
from restore.export import BackupExport
from vmm import image_info

DISK = 128 * MiB
# bytes/s: slow enough that the guest boots and writes while the copy has far to go; the tests
# lift the limit once the writes are in.
SLOW = 256 * 1024
# What the test writes into the source VM before its backup, and into the restored VM.
BACKED_UP = [(0x5A, 20 * MiB, 2 * MiB)]
AFTER_BOOT = [(0x77, 21 * MiB - 64 * 1024, 512 * 1024), (0x66, 50 * MiB, MiB)]


@pytest.fixture
def guest_backup(appliance, guest_kernel) -> str:
    boot_guest_vm(appliance, guest_kernel, "src", [DISK])
    for pattern, offset, length in BACKED_UP:
        run(write_pattern(appliance, "src", "vda", pattern, offset, length))
    backup_id = run(appliance.backups.create(appliance.vms.spec("src"))).manifest.backup_id
    run(appliance.vms.stop("src", force=True))
    return backup_id


def expected_disk(appliance: Appliance, backup_id: str, writes, tmp_path: Path) -> Path:
    """The backup restored to a raw file, with the guest's writes applied."""
    reference = tmp_path / "expected.raw"
    restore_disk(appliance.store, backup_id, "vda", reference)
    with open(reference, "r+b") as f:
        for pattern, offset, length in writes:
            f.seek(offset)
            f.write(bytes([pattern]) * length)
    return reference


def exports_running(appliance: Appliance, vm: str) -> list[int]:
    state = appliance.restores.instant.load(vm)
    pids = (BackupExport(Path(d.socket), Path(d.socket).with_suffix(".pid")).pid() for d in state.disks)
    return [p for p in pids if p is not None]


def test_instant_restore_boots_at_once_and_ends_independent(appliance, guest_backup, tmp_path):
    started = time.monotonic()
    state = run(appliance.restores.instant.start(guest_backup, "fast", speed=SLOW))
    wait_serial(appliance, "fast", "CAIRN: READY", timeout=180)
    booted = time.monotonic() - started
    for pattern, offset, length in AFTER_BOOT:
        run(write_pattern(appliance, "fast", "vda", pattern, offset, length))
    copying = run(appliance.restores.instant.poll("fast"))
    assert copying.status == "hydrating" and copying.progress["vda"][0] < DISK
    overlay = state.disks[0].overlay
    assert image_info(overlay).get("backing-filename", "").startswith("nbd+unix://")
    run(appliance.restores.instant.set_speed("fast", 0))
    done = run(appliance.restores.instant.wait("fast", timeout=600))
    assert done.status == "done" and done.error is None
    assert "backing-filename" not in image_info(overlay)
    assert exports_running(appliance, "fast") == []
    run(appliance.vms.stop("fast", force=True))
    assert same_image(expected_disk(appliance, guest_backup, AFTER_BOOT, tmp_path), overlay)
    print(f"instant restore: guest READY {booted:.1f}s after the restore started")


def test_instant_restore_resumes_after_everything_died(appliance, guest_backup, appliance_data_dir, tmp_path):
    state = run(appliance.restores.instant.start(guest_backup, "phoenix", speed=SLOW))
    wait_serial(appliance, "phoenix", "CAIRN: READY", timeout=180)
    written = AFTER_BOOT[:1]
    for pattern, offset, length in written:
        run(write_pattern(appliance, "phoenix", "vda", pattern, offset, length))

    async def flush() -> None:
        async with appliance.driver.session("phoenix") as qmp:
            await qmp.qemu_io("vda", "flush")
    run(flush())
    # Power loss: QEMU, nbdkit and the appliance all die mid-copy.
    os.kill(appliance.vms.show("phoenix").status.pid, signal.SIGKILL)
    for pid in exports_running(appliance, "phoenix"):
        os.kill(pid, signal.SIGKILL)
    restarted = Appliance.open(str(appliance_data_dir))
    instant = restarted.restores.instant
    failed = run(instant.poll("phoenix"))
    assert failed.status == "failed" and "resume" in failed.error
    run(instant.resume("phoenix", speed=0))
    wait_serial(restarted, "phoenix", "CAIRN: READY", timeout=180)
    done = run(instant.wait("phoenix", timeout=600))
    assert done.status == "done"
    run(restarted.vms.stop("phoenix", force=True))
    overlay = state.disks[0].overlay
    assert "backing-filename" not in image_info(overlay)
    # The guest rewrote its boot pattern when it booted again: the same bytes as backed up.
    assert same_image(expected_disk(restarted, guest_backup, written, tmp_path), overlay)
