"""Byte-exact backups of a guest that writes without pause, by pull and by push.

The guest (tests/guest, writer mode) writes 64 KiB of random data to both disks, one MiB
further on each time, with O_DIRECT and fsync, for as long as the test runs. Nothing stops or
pauses it: the backup reads the instant its QMP transaction froze while the guest goes on.

The reference is a copy of that same instant made by QEMU itself: a full `blockdev-backup` of
each disk into a qcow2 file of the test, started by the same transaction as the backup's own
export (transports.live.joined_to_the_freeze, a test hook). Copy-before-write keeps it at that
instant whatever the guest writes afterwards. Each disk of the backup, restored, must equal its
reference byte for byte; that the guest wrote during the backup, and that the disks moved on
from the instant, is checked too, so the comparison is not against a disk that held still.
"""
from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest
from backup_helpers import new_guest_vm, run, same_content, wait_serial, write_pattern

from appliance.backups.options import BackupOptions
from appliance.context import Appliance
from restore import restore_disk
from transports.live import joined_to_the_freeze

GiB = 1 << 30
DISKS = ("vda", "vdb")
# Sparse disks: each write lands 1 MiB further on, from 200 MiB (tests/guest/init); at a few
# dozen writes a second this lasts well beyond the test.
WRITER = "cairn.mode=writer cairn.writes=1000000 cairn.interval=0 cairn.writedisks=vda,vdb"
JOB_TIMEOUT = 120.0


def writes_so_far(appliance: Appliance, vm: str) -> int:
    log = (appliance.settings.run_dir / vm / "serial.log").read_text(errors="replace")
    return len(re.findall(r"CAIRN: WRITE n=", log))


async def add_references(appliance: Appliance, vm: str, folder: Path) -> dict[str, Path]:
    """A blank qcow2 file per disk, open in the VM's QEMU as node ref-<disk>."""
    files = {}
    async with appliance.driver.session(vm) as s:
        for disk in DISKS:
            files[disk] = folder / f"{disk}.ref.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(files[disk]), str(2 * GiB)], check=True)
            await s.execute("blockdev-add", {"driver": "qcow2", "node-name": f"ref-{disk}",
                                             "file": {"driver": "file", "filename": str(files[disk])}})
    return files


def reference_copies(nodes: dict[str, str]) -> list[dict]:
    """Joined to the backup's freezing transaction: copy each disk as it is at that instant."""
    return [{"type": "blockdev-backup", "data": {"job-id": f"ref-{disk}", "device": nodes[disk],
                                                 "target": f"ref-{disk}", "sync": "full", "auto-dismiss": False}}
            for disk in DISKS]


async def finish_references(appliance: Appliance, vm: str) -> None:
    """Wait for the reference copies (QEMU's JOB_STATUS_CHANGE events would do as well), then
    let go of their files."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOB_TIMEOUT
    async with appliance.driver.session(vm) as s:
        while True:
            jobs = {j["id"]: j for j in await s.execute("query-jobs") if j["id"].startswith("ref-")}
            assert len(jobs) == len(DISKS) and not any(j.get("error") for j in jobs.values()), jobs
            if all(j["status"] == "concluded" for j in jobs.values()):
                break
            assert loop.time() < deadline, jobs
            await asyncio.sleep(0.1)
        for disk in DISKS:
            await s.execute("job-dismiss", {"id": f"ref-{disk}"})
            await s.execute("blockdev-del", {"node-name": f"ref-{disk}"})


def differs(image: str, reference: Path) -> bool:
    """Whether a disk the VM still writes holds other bytes than the reference (-U: open in QEMU)."""
    return subprocess.run(["qemu-img", "compare", "-q", "-U", "-F", "qcow2", image, str(reference)],
                          check=False).returncode == 1


@pytest.mark.parametrize("transport", ["pull", "push"])
def test_backups_taken_while_the_guest_writes_equal_qemus_own_copy_of_their_instant(
        appliance: Appliance, guest_kernel, tmp_path: Path, transport: str):
    vm = f"writing{transport}"
    new_guest_vm(appliance, guest_kernel, vm, [2 * GiB, 2 * GiB], WRITER)
    # Data for the full backup to read (beyond where the guest writes for a long while), so that
    # it lasts through several of the guest's writes however quick the data path is.
    for disk in appliance.vms.spec(vm).disks:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {GiB} {768 << 20}", disk.path],
                       check=True, capture_output=True)
    run(appliance.vms.start(vm))
    wait_serial(appliance, vm, "CAIRN: READY")
    wait_serial(appliance, vm, "CAIRN: WRITE n=3 ")
    try:
        for kind in ("full", "incremental"):
            folder = tmp_path / kind
            folder.mkdir()
            if kind == "incremental":   # as much again for it to read: new data where the full read some
                for disk in DISKS:
                    run(write_pattern(appliance, vm, disk, 0x5b, GiB, 768 << 20))
            references = run(add_references(appliance, vm, folder))
            before = writes_so_far(appliance, vm)
            with joined_to_the_freeze(reference_copies):
                manifest = run(appliance.backups.create(appliance.vms.spec(vm),
                                                        options=BackupOptions(transport=transport))).manifest
            during = writes_so_far(appliance, vm) - before
            run(finish_references(appliance, vm))
            assert manifest.kind == kind, manifest.notes
            assert during >= 2, f"the guest wrote {during} times during the {kind} backup"
            for disk in DISKS:
                restored = folder / f"{disk}.raw"
                restore_disk(appliance.store, manifest.backup_id, disk, restored)
                assert same_content(restored, references[disk], "qcow2"), f"{kind} backup of {disk}"
                path = next(d.path for d in appliance.vms.spec(vm).disks if d.name == disk)
                assert differs(path, references[disk]), f"{disk} never moved on from the {kind} backup's instant"
    finally:
        run(appliance.vms.stop(vm, timeout=5, force=True))
