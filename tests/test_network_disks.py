"""A Cairn VM whose disk is an NBD export (served here by qemu-nbd), taken over from a QEMU command
line: backed up full and then incrementally while it runs (its QEMU keeps the dirty bitmap in
memory: nothing can be stored in an NBD export), in full with the reason after a restart and
while stopped, each backup restored and compared byte for byte with `qemu-img compare` against
a copy taken while paused. A server that is gone is refused, saying so, before anything starts."""
from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_helpers import reference_copy, run, same_content, wait_serial
from guest.harness import MiB

from appliance.backups.service import BackupResult
from appliance.context import Appliance
from appliance.errors import NotFoundError
from appliance.vms.imports import VMImports
from restore import restore_disk
from vmm.errors import VMStartError

VM = "onnbd"
WRITER = "console=ttyS0 quiet cairn.mode=writer cairn.writes=1000 cairn.interval=1 cairn.writedisks=vda"


@pytest.fixture
def nbd_export(tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A 64 MiB raw file served by qemu-nbd on a unix socket: (its URL, the server)."""
    image = tmp_path / "export.raw"
    with image.open("wb") as f:
        f.truncate(64 * MiB)
    socket = tmp_path / "nbd.sock"
    server = subprocess.Popen(["qemu-nbd", "--persistent", "--shared=4", "--format=raw", "--export-name=data",
                               f"--socket={socket}", str(image)])
    url = f"nbd+unix:///data?socket={socket}"
    for _ in range(100):
        if subprocess.run(["qemu-img", "info", "-f", "raw", url], capture_output=True, check=False).returncode == 0:
            break
        server.poll()
        assert server.returncode is None, "qemu-nbd did not start"
        subprocess.run(["sleep", "0.1"], check=True)
    yield url, server
    server.terminate()
    server.wait(timeout=30)


def take_over(appliance: Appliance, guest_kernel, url: str) -> None:
    """The VM a QEMU command line with the NBD disk starts, imported as a Cairn VM."""
    command = ["qemu-system-x86_64", "-name", VM, "-m", "256", "-kernel", str(guest_kernel.kernel),
               "-initrd", str(guest_kernel.initrd), "-append", WRITER, "-drive", f"file={url},format=raw,if=virtio"]
    imported = VMImports(appliance.vms, appliance.hosts).from_command_line(command)
    assert [(d.name, d.path, d.format) for d in imported.spec.disks] == [("vda", url, "raw")]


def writes(appliance: Appliance) -> int:
    return (appliance.settings.run_dir / VM / "serial.log").read_text(errors="replace").count("CAIRN: WRITE n=")


def start(appliance: Appliance) -> None:
    (appliance.settings.run_dir / VM / "serial.log").unlink(missing_ok=True)
    run(appliance.vms.start(VM))
    wait_serial(appliance, VM, "CAIRN: WRITE n=1", timeout=180)


def paused_backup(appliance: Appliance, refdir: Path) -> BackupResult:
    wait_serial(appliance, VM, f"CAIRN: WRITE n={writes(appliance) + 1}")   # new writes to find

    async def body() -> BackupResult:
        async with appliance.driver.session(VM) as s:
            await s.execute("stop")
            await reference_copy(s, "vda", refdir / "vda.raw", refdir / "ref.sock")
        try:
            return await appliance.backups.create(appliance.vms.spec(VM))
        finally:
            async with appliance.driver.session(VM) as s:
                await s.execute("cont")

    return run(body())


def assert_restores(appliance: Appliance, result: BackupResult, refdir: Path) -> None:
    out = refdir / "restored.raw"
    restore_disk(appliance.store, result.manifest.backup_id, "vda", out, fmt="raw", verify=True)
    assert same_content(refdir / "vda.raw", out), f"{result.manifest.backup_id}: vda differs"
    out.unlink()


@pytest.mark.slow
def test_a_vm_with_an_nbd_disk_is_backed_up_incrementally_while_it_runs(appliance, guest_kernel, nbd_export,
                                                                        tmp_path):
    url, _ = nbd_export
    take_over(appliance, guest_kernel, url)
    start(appliance)

    full = paused_backup(appliance, tmp_path)
    assert full.manifest.kind == "full" and full.notes == [], full.notes
    assert_restores(appliance, full, tmp_path)

    inc = paused_backup(appliance, tmp_path)
    assert inc.manifest.kind == "incremental" and inc.notes == [], inc.notes
    assert inc.points[0].since, inc.points
    assert inc.manifest.disks[0].stats.bytes_read <= 8 * MiB, inc.manifest.disks[0].stats
    assert_restores(appliance, inc, tmp_path)

    run(appliance.vms.stop(VM, force=True))
    start(appliance)
    after = paused_backup(appliance, tmp_path)
    assert not after.points[0].since
    assert any(n.startswith(f"vda: raw image: its checkpoint bitmap {inc.manifest.checkpoint} lived only in the "
                            "QEMU that ran the VM then") for n in after.notes), after.notes
    assert_restores(appliance, after, tmp_path)

    # Stopped: read through the export in full, saying why.
    run(appliance.vms.stop(VM, force=True))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(tmp_path / "vda.raw")], check=True)
    stopped = run(appliance.backups.create(appliance.vms.spec(VM)))
    assert "vda is raw: no dirty bitmap is stored in it (only a running VM's QEMU keeps one), full read" \
        in stopped.notes, stopped.notes
    assert_restores(appliance, stopped, tmp_path)


def test_an_nbd_server_that_is_gone_is_refused_with_the_reason(appliance, guest_kernel, nbd_export, tmp_path):
    url, server = nbd_export
    take_over(appliance, guest_kernel, url)
    server.terminate()
    server.wait(timeout=30)
    with pytest.raises(VMStartError, match=f"disk vda: cannot open NBD export {re.escape(url)}: .*Failed to connect"):
        run(appliance.vms.start(VM))
    assert appliance.driver.status(VM).state == "stopped"
    with pytest.raises(Exception, match=f"disk vda: cannot open NBD export {re.escape(url)}: .*Failed to connect"):
        run(appliance.backups.create(appliance.vms.spec(VM)))
    assert [b.status for b in appliance.backups.list(VM)] == ["failed"]
    with pytest.raises(NotFoundError, match=f"disk {re.escape(url)} cannot be opened"):
        VMImports(appliance.vms, appliance.hosts).from_command_line(
            ["qemu-system-x86_64", "-drive", f"file={url},format=raw,if=virtio"], name="another")


def test_a_network_disk_is_opened_raw_by_blockdev_and_malformed_ones_are_refused(tmp_path):
    from vmm import DiskSpec
    from vmm.accel import detect_accel
    from vmm.cmdline import build_command
    from vmm.errors import VMSpecError
    from vmm.rundir import RunDir
    from vmm.spec import VMSpec

    disks = [DiskSpec("vda", "rbd:rbd/ns/web-vda:conf=/etc/ceph/a\\:b.conf:id=cairn", "raw"),
             DiskSpec("vdb", "nbd://10.0.0.5:10810/data", "raw"),
             DiskSpec("vdc", "nbd+unix:///data?socket=/run/nbd.sock", "raw")]
    spec = VMSpec("net", disks=disks)
    spec.validate()
    blockdevs = [json.loads(a) for a in build_command("qemu", spec, detect_accel(), RunDir(tmp_path))
                 if a.startswith("{")]
    assert blockdevs[0] == {"driver": "rbd", "node-name": "vda-file", "pool": "rbd", "image": "web-vda",
                            "namespace": "ns", "conf": "/etc/ceph/a:b.conf", "user": "cairn",
                            "cache": {"direct": False}}
    assert blockdevs[1] == {"driver": "raw", "file": "vda-file", "node-name": "vda"}
    assert blockdevs[2]["server"] == {"type": "inet", "host": "10.0.0.5", "port": "10810"}
    assert blockdevs[4]["server"] == {"type": "unix", "path": "/run/nbd.sock"}
    for path, fmt, why in (("rbd:rbd/web-vda", "qcow2", "is opened raw"),
                           ("rbd:rbd/web-vda:keyring=/k", "raw", "takes no keyring"),
                           ("rbd:rbd/web-vda:mon_host=x", "raw", "unknown options mon_host"),
                           ("rbd:rbd/web-vda@snap", "raw", "is not rbd:POOL"),
                           ("nbd://:10809/x", "raw", "is not nbd://HOST"),
                           ("nbd+unix:///x", "raw", "is not nbd://HOST")):
        with pytest.raises(VMSpecError, match=why):
            DiskSpec("vda", path, fmt).validate()
