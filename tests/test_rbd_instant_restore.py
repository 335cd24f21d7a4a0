"""Instant restore onto RBD on the test's own Ceph (ceph_cluster.py): the VM runs from the backup at
once while its disk is copied into a new RBD image with the guest's writes, then it runs on that
image (a VM on RBD like one created in the rbd storage pool), the overlay and the export gone. The
image equals the backup plus the guest's writes, by `qemu-img compare`."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from backup_helpers import MiB, boot_guest_vm, run, wait_serial, write_pattern

from appliance.context import Appliance
from restore import restore_disk
from restore.export import BackupExport

DISK = 128 * MiB
SLOW = 4 * 1024      # bytes/s: the guest boots and writes while the copy has far to go
BACKED_UP = [(0x5A, 20 * MiB, 2 * MiB)]
AFTER_BOOT = [(0x77, 21 * MiB - 64 * 1024, 512 * 1024), (0x66, 50 * MiB, MiB)]


def expected_disk(appliance: Appliance, backup_id: str, tmp_path: Path) -> Path:
    reference = tmp_path / "expected.raw"
    restore_disk(appliance.store, backup_id, "vda", reference)
    with open(reference, "r+b") as f:
        for pattern, offset, length in AFTER_BOOT:
            f.seek(offset)
            f.write(bytes([pattern]) * length)
    return reference


def deleted_with_its_image(appliance, ceph_cluster, vm: str) -> None:
    """Deleting the restored VM removes its image from the cluster's pool, which the test of the
    other catalog shares."""
    appliance.vms.delete(vm)
    images = ceph_cluster.cli("rbd", "ls", ceph_cluster.rbd_pool).split()
    assert not [i for i in images if i.startswith(f"{vm}-")], images


def test_an_instant_restore_copies_into_rbd_and_the_vm_ends_on_the_image(appliance, guest_kernel, ceph_cluster,
                                                                         tmp_path):
    boot_guest_vm(appliance, guest_kernel, "src", [DISK])
    for pattern, offset, length in BACKED_UP:
        run(write_pattern(appliance, "src", "vda", pattern, offset, length))
    backup_id = run(appliance.backups.create(appliance.vms.spec("src"))).manifest.backup_id
    run(appliance.vms.stop("src", force=True))
    appliance.vms.pools.create_storage("ceph", "rbd", f"rbd:{ceph_cluster.rbd_pool}:conf={ceph_cluster.conf}")

    state = run(appliance.restores.instant.start(backup_id, "fromrbd", speed=SLOW, storage_pool="ceph"))
    (disk,) = state.disks
    assert disk.target == f"rbd:{ceph_cluster.rbd_pool}/fromrbd-vda:conf={ceph_cluster.conf}"
    assert appliance.vms.spec("fromrbd").disks[0].path == disk.overlay, "it runs from the overlay meanwhile"
    wait_serial(appliance, "fromrbd", "CAIRN: READY", timeout=180)
    for pattern, offset, length in AFTER_BOOT:
        run(write_pattern(appliance, "fromrbd", "vda", pattern, offset, length))
    copying = run(appliance.restores.instant.poll("fromrbd"))
    assert copying.status == "hydrating" and copying.progress["vda"][0] < DISK, copying

    run(appliance.restores.instant.set_speed("fromrbd", 0))
    done = run(appliance.restores.instant.wait("fromrbd", timeout=600))
    assert done.status == "done" and done.error is None, done
    spec = appliance.vms.spec("fromrbd")
    assert [(d.path, d.format) for d in spec.disks] == [(disk.target, "raw")]
    assert not Path(disk.overlay).exists()
    assert BackupExport(Path(disk.socket), Path(disk.socket).with_suffix(".pid")).pid() is None

    # The running VM writes into the image now: one more write lands there, and a restart opens it.
    run(write_pattern(appliance, "fromrbd", "vda", 0x44, 90 * MiB, MiB))
    run(appliance.vms.stop("fromrbd", force=True))
    expected = expected_disk(appliance, backup_id, tmp_path)
    with open(expected, "r+b") as f:
        f.seek(90 * MiB)
        f.write(b"\x44" * MiB)
    done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(expected), disk.target],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    run(appliance.vms.start("fromrbd"))
    wait_serial(appliance, "fromrbd", "CAIRN: READY", timeout=180)
    run(appliance.vms.stop("fromrbd", force=True))
    deleted_with_its_image(appliance, ceph_cluster, "fromrbd")


def test_an_instant_restore_onto_rbd_whose_qemu_died_resumes_and_loses_no_write(appliance, guest_kernel,
                                                                                 ceph_cluster, tmp_path):
    boot_guest_vm(appliance, guest_kernel, "src", [DISK])
    for pattern, offset, length in BACKED_UP:
        run(write_pattern(appliance, "src", "vda", pattern, offset, length))
    backup_id = run(appliance.backups.create(appliance.vms.spec("src"))).manifest.backup_id
    run(appliance.vms.stop("src", force=True))
    appliance.vms.pools.create_storage("ceph", "rbd", f"rbd:{ceph_cluster.rbd_pool}:conf={ceph_cluster.conf}")
    name = "phoenixrbd"
    state = run(appliance.restores.instant.start(backup_id, name, speed=SLOW, storage_pool="ceph"))
    wait_serial(appliance, name, "CAIRN: READY", timeout=180)
    for pattern, offset, length in AFTER_BOOT:
        run(write_pattern(appliance, name, "vda", pattern, offset, length))


    async def flush() -> None:   # what the guest was told is written, as a guest's flush makes it
        async with appliance.driver.session(name) as qmp:
            await qmp.qemu_io("vda", "flush")
    run(flush())
    # QEMU (and the mirror in it) and the export die mid-copy.
    os.kill(appliance.driver.status(name).pid, signal.SIGKILL)
    (disk,) = state.disks
    export = BackupExport(Path(disk.socket), Path(disk.socket).with_suffix(".pid"))
    os.kill(export.pid(), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (appliance.driver.status(name).state in ("running", "paused") or export.pid()) \
            and time.monotonic() < deadline:
        time.sleep(0.2)   # until both are gone (a signal is delivered, and a process reaped, a little later)
    failed = run(appliance.restores.instant.poll(name))
    assert failed.status == "failed" and "resume" in failed.error, failed
    run(appliance.restores.instant.resume(name, speed=0))
    done = run(appliance.restores.instant.wait(name, timeout=600))
    assert done.status == "done", done
    assert appliance.vms.spec(name).disks[0].path == disk.target and not Path(disk.overlay).exists()
    run(appliance.vms.stop(name, force=True))
    compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                               str(expected_disk(appliance, backup_id, tmp_path)), disk.target],
                              capture_output=True, text=True, check=False)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    deleted_with_its_image(appliance, ceph_cluster, name)
