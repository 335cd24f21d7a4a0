"""The first slice end to end: a running guest, a full and two incremental backups,
each point restored byte-exact; the stopped-VM path; a crash that costs the bitmap."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backup_helpers import (
    MiB,
    boot_guest_vm,
    new_guest_vm,
    paused_backup_with_reference,
    reference_copy,
    run,
    same_content,
    wait_serial,
    write_pattern,
)

from appliance.context import Appliance
from dedup import Store
from restore import restore_disk


@pytest.mark.slow
def test_running_vm_full_then_incrementals_restore_byte_exact(appliance: Appliance, guest_kernel, tmp_path: Path):
    new_guest_vm(appliance, guest_kernel, "web1", [256 * MiB, 64 * MiB])
    run(appliance.vms.start("web1"))
    try:
        wait_serial(appliance, "web1", "CAIRN: PATTERN-WRITTEN")
        points = []
        for step, writes in enumerate([
            [],                                                     # full: the guest's own boot pattern
            [("vda", 0x11, 10 * MiB, 64 << 10), ("vda", 0x12, 150 * MiB, 128 << 10), ("vdb", 0x13, 1 * MiB, 4096)],
            [("vda", 0x21, 10 * MiB + 4096, 4096), ("vda", 0x22, 200 * MiB, MiB)],
        ]):
            for disk, pattern, off, length in writes:
                run(write_pattern(appliance, "web1", disk, pattern, off, length))
            refdir = tmp_path / f"ref{step}"
            refdir.mkdir()
            manifest = run(paused_backup_with_reference(appliance, "web1", ["vda", "vdb"], refdir))
            points.append((manifest, refdir, writes))

        full, inc1, inc2 = (p[0] for p in points)
        assert full.kind == "full" and inc1.kind == "incremental" and inc2.kind == "incremental"
        assert inc1.parent == full.backup_id and inc2.parent == inc1.backup_id

        # Incrementals read only the bytes the writes touched (4 KiB bitmap granules) and store
        # about that much; everything else is the parent's.
        for manifest, _, writes in points[1:]:
            for disk in manifest.disks:
                written = sum(n for d, _, _, n in writes if d == disk.name)
                assert disk.stats.bytes_read <= written, (disk.name, disk.stats)
                assert disk.stats.bytes_changed <= written, (disk.name, disk.stats)
                assert disk.stats.bytes_stored + disk.stats.metadata_stored <= 2 * written + (64 << 10), disk.stats
        assert sum(d.stats.bytes_read for d in inc1.disks) == (64 << 10) + (128 << 10) + 4096
        for manifest, refdir, _ in points:
            for disk in ("vda", "vdb"):
                raw = tmp_path / f"{manifest.backup_id}-{disk}.raw"
                restore_disk(appliance.store, manifest.backup_id, disk, raw, fmt="raw")
                assert same_content(refdir / f"{disk}.raw", raw), (manifest.backup_id, disk)
        qcow = tmp_path / "inc1-vda.qcow2"
        restore_disk(Store.open(appliance.settings.store_dir), inc1.backup_id, "vda", qcow, fmt="qcow2")
        assert same_content(points[1][1] / "vda.raw", qcow, "qcow2")
    finally:
        run(appliance.vms.stop("web1", timeout=5, force=True))


def test_stopped_vm_backups_are_incremental_across_restart(appliance: Appliance, guest_kernel, tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "db1", [128 * MiB])
    first = run(appliance.backups.create(appliance.vms.spec("db1"))).manifest
    run(appliance.vms.stop("db1", timeout=5, force=True))     # QMP quit: bitmaps are stored in the image

    disk = appliance.vms.spec("db1").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {40 * MiB} 8192", disk], check=True,
                   capture_output=True)
    second = run(appliance.backups.create(appliance.vms.spec("db1"))).manifest
    assert second.kind == "incremental" and second.notes == ()
    assert second.disks[0].stats.bytes_read == 8192

    assert restores_to_image(appliance, second.backup_id, disk, tmp_path)
    assert first.backup_id != second.backup_id


def restores_to_image(appliance: Appliance, backup_id: str, image: str, tmp_path: Path) -> bool:
    """The backup's only disk restores to exactly what the (stopped VM's) image holds."""
    ref, out = tmp_path / f"{backup_id}.ref.raw", tmp_path / f"{backup_id}.out.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", image, str(ref)], check=True)
    restore_disk(appliance.store, backup_id, None, out)
    return same_content(ref, out)


def test_killed_qemu_loses_the_bitmap_and_the_next_backup_reads_in_full(appliance: Appliance, guest_kernel,
                                                                        tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "crashy", [128 * MiB])
    run(appliance.backups.create(appliance.vms.spec("crashy")))
    run(write_pattern(appliance, "crashy", "vda", 0x77, 30 * MiB, 65536))
    os.kill(appliance.driver.status("crashy").pid, signal.SIGKILL)
    appliance_status = appliance.driver.status("crashy")
    for _ in range(50):
        if appliance_status.state == "crashed":
            break
        time.sleep(0.1)
        appliance_status = appliance.driver.status("crashy")
    assert appliance_status.state == "crashed"

    after = run(appliance.backups.create(appliance.vms.spec("crashy"))).manifest
    assert after.kind == "full"
    assert any("inconsistent" in n or "missing" in n for n in after.notes), after.notes
    assert restores_to_image(appliance, after.backup_id, appliance.vms.spec("crashy").disks[0].path, tmp_path)


# The backing-up process: at the copy's first progress report (a pause point: the export is up and
# the copy far from done) it says so and waits to be killed.
BACKUP_UNTIL_KILLED = """
import asyncio, sys, threading
from appliance.context import Appliance
app = Appliance.open(sys.argv[1])
def pause_mid_copy(disk, done, total):
    if 0 < done < total:
        print(disk, done, total, flush=True)
        threading.Event().wait()
asyncio.run(app.backups.create(app.vms.spec(sys.argv[2]), progress=pause_mid_copy))
"""


def test_backup_killed_midway_loses_nothing_and_the_next_one_repairs(appliance: Appliance, guest_kernel,
                                                                      tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "victim", [512 * MiB])
    run(appliance.backups.create(appliance.vms.spec("victim")))
    for n in range(6):                       # what the next backup must see, the killed one read part of it
        run(write_pattern(appliance, "victim", "vda", 0x30 + n, (120 + 64 * n) * MiB, 48 * MiB))

    proc = subprocess.Popen([sys.executable, "-c", BACKUP_UNTIL_KILLED, str(appliance.settings.data_dir), "victim"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("vda"), "the backup never reported its copy"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    interrupted = [b for b in appliance.backups.list("victim") if b.status != "ok"]
    assert len(interrupted) == 1 and interrupted[0].status == "failed"
    assert "interrupted" in interrupted[0].error
    assert interrupted[0].id not in {m.backup_id for m in appliance.store.list_backups("victim")}

    run(write_pattern(appliance, "victim", "vda", 0x99, 7 * MiB, 65536))
    run(appliance.driver.pause("victim"))
    after = run(appliance.backups.create(appliance.vms.spec("victim"))).manifest
    refdir = tmp_path / "ref"
    refdir.mkdir()

    async def reference() -> None:     # still paused: the disk is as the backup saw it
        async with appliance.driver.session("victim") as s:
            await reference_copy(s, "vda", refdir / "vda.raw", refdir / "ref.sock")
    run(reference())
    # The interrupted backup had frozen the checkpoint; folding its own bitmap back in keeps
    # the next backup incremental, and it still sees every write since the last good one.
    assert after.kind == "incremental", after.notes
    assert any("interrupted backup" in n for n in after.notes), after.notes
    out = tmp_path / "after.raw"
    restore_disk(appliance.store, after.backup_id, "vda", out)
    assert same_content(refdir / "vda.raw", out)
    run(appliance.vms.stop("victim", timeout=5, force=True))
