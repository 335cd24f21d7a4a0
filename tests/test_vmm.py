"""vmm against real QEMU (TCG) and the busybox test guest; no mocks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from guest.harness import PATTERN_LINE, PATTERN_OFFSETS, PATTERN_SIZE, MiB, read_image

from vmm import (
    Accel,
    AccelError,
    DiskNotFoundError,
    DiskSpec,
    ImageError,
    JobFailedError,
    QemuDriver,
    QemuIOError,
    QMPCommandError,
    QMPConnectError,
    VMAlreadyRunningError,
    VMNotRunningError,
    VMSpec,
    VMSpecError,
    VMStartError,
    VMStateError,
    create_disk,
    detect_accel,
    image_info,
)
from vmm.cmdline import build_command
from vmm.rundir import RunDir, read_state


def run(coro):
    return asyncio.run(coro)


# -- no QEMU needed ---------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/sys/module/kvm_pvm"), reason="not a kvm_pvm host")
def test_accel_falls_back_to_tcg_on_kvm_pvm(monkeypatch):
    monkeypatch.delenv("CAIRN_ACCEL", raising=False)
    accel = detect_accel()
    assert accel.name == "tcg"
    assert "kvm_pvm" in accel.reason
    assert accel.qemu_args() == ["-accel", "tcg,thread=multi", "-cpu", "max"]


def test_accel_override(monkeypatch):
    monkeypatch.setenv("CAIRN_ACCEL", "kvm")
    assert detect_accel() == Accel("kvm", "forced by CAIRN_ACCEL=kvm")
    assert detect_accel().qemu_args() == ["-accel", "kvm", "-cpu", "host"]
    monkeypatch.setenv("CAIRN_ACCEL", "tcg")
    assert detect_accel().name == "tcg"
    monkeypatch.setenv("CAIRN_ACCEL", "hvf")
    with pytest.raises(AccelError, match="hvf"):
        detect_accel()


def test_spec_round_trip_and_validation():
    spec = VMSpec("web-1", memory_mib=512, vcpus=2,
                  disks=[DiskSpec("vda", "/img/a.qcow2"), DiskSpec("data_2", "/img/b.raw", "raw")],
                  kernel="/boot/k", initrd="/boot/i", append="console=ttyS0")
    spec.validate()
    assert VMSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec

    def invalid(message: str, **changes):
        data = {**spec.to_dict(), **changes}
        with pytest.raises(VMSpecError, match=message):
            VMSpec.from_dict(data)

    invalid("invalid VM name", name="Web")
    invalid("invalid VM name", name="x" * 64)
    invalid("invalid disk name", disks=[{"name": "v" * 27, "path": "/a"}])
    invalid("must be absolute", disks=[{"name": "vda", "path": "a.qcow2"}])
    invalid("format 'vmdk'", disks=[{"name": "vda", "path": "/a", "format": "vmdk"}])
    invalid("duplicate disk names", disks=[{"name": "vda", "path": "/a"}] * 2)
    invalid("unknown keys", disks=[{"name": "vda", "path": "/a", "bus": "ide"}])
    invalid("missing keys", disks=[{"name": "vda"}])
    invalid("unknown keys", floppy="/x.img")
    invalid("memory_mib", memory_mib="256")
    invalid("vcpus", vcpus=0)
    invalid("need a kernel", kernel=None)
    invalid("machine", machine="q35,accel=kvm")


def test_command_line_follows_the_block_naming_contract():
    spec = VMSpec("vm1", disks=[DiskSpec("vda", "/img/a,b.qcow2"),
                                DiskSpec("vdb", "/img/b", "raw")])
    rundir = RunDir(Path("/run/cairn/vm1"))
    cmd = build_command("qemu-system-x86_64", spec, Accel("tcg", "test"), rundir)
    blockdevs = [json.loads(cmd[i + 1]) for i, arg in enumerate(cmd) if arg == "-blockdev"]
    assert blockdevs == [
        {"driver": "file", "filename": "/img/a,b.qcow2", "node-name": "vda-file",
         "cache": {"direct": False}},
        {"driver": "qcow2", "file": "vda-file", "node-name": "vda"},
        {"driver": "file", "filename": "/img/b", "node-name": "vdb-file",
         "cache": {"direct": False}},
        {"driver": "raw", "file": "vdb-file", "node-name": "vdb"},
    ]
    devices = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "-device"]
    assert devices[:2] == ["virtio-blk-pci,drive=vda,id=vda-dev,share-rw=on",
                           "virtio-blk-pci,drive=vdb,id=vdb-dev,share-rw=on"]
    for expected in (["-machine", "q35"], ["-accel", "tcg,thread=multi", "-cpu", "max"],
                     ["-pidfile", "/run/cairn/vm1/qemu.pid"], ["-nodefaults", "-no-user-config"]):
        assert any(cmd[i:i + len(expected)] == expected for i in range(len(cmd))), expected
    assert "-daemonize" in cmd


def test_images(tmp_path):
    base = tmp_path / "base.qcow2"
    create_disk(base, 64 * MiB)
    assert image_info(base)["virtual-size"] == 64 * MiB
    overlay = tmp_path / "overlay.qcow2"
    create_disk(overlay, None, backing=base)
    info = image_info(overlay)
    assert info["virtual-size"] == 64 * MiB
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    raw = tmp_path / "disk.raw"
    create_disk(raw, MiB, fmt="raw")
    assert image_info(raw)["format"] == "raw"

    with pytest.raises(ImageError, match="already exists"):
        create_disk(base, MiB)
    with pytest.raises(ImageError, match="only qcow2"):
        create_disk(tmp_path / "x.raw", None, fmt="raw", backing=base)
    with pytest.raises(ImageError, match="No such file") as missing:
        image_info(tmp_path / "missing.qcow2")
    assert missing.value.stderr


def test_missing_disk_is_a_clear_error_and_leaves_no_process(qemu_driver, guest_kernel, tmp_path):
    missing = tmp_path / "nope.qcow2"
    spec = VMSpec("lost", disks=[DiskSpec("vda", str(missing))], kernel=str(guest_kernel.kernel))
    with pytest.raises(DiskNotFoundError, match=str(missing)) as err:
        run(qemu_driver.start(spec))
    assert err.value.path == str(missing)
    assert qemu_driver.status("lost").state == "stopped"
    assert not qemu_driver.paths("lost").pidfile.exists()


def test_qemu_start_failure_includes_its_log(qemu_driver, tmp_path):
    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(os.urandom(MiB))
    spec = VMSpec("broken", disks=[DiskSpec("vda", str(garbage))])
    with pytest.raises(VMStartError, match="Image is not in qcow2 format") as err:
        run(qemu_driver.start(spec))
    assert "not in qcow2 format" in err.value.log_tail
    assert qemu_driver.status("broken").state == "stopped"


# -- real guests ---------------------------------------------------------------------------------

def test_two_disk_guest_pattern_pause_and_graceful_stop(start_guest, qemu_driver):
    async def scenario():
        vm = await start_guest("life", disk_sizes=(256 * MiB, 64 * MiB))
        print(f"\nboot, spawn to READY: {time.monotonic() - vm.spawned_at:.2f}s")
        assert "CAIRN: DISKS n=2" in vm.serial()
        status = qemu_driver.status("life")
        assert (status.state, status.accel) == ("running", "tcg")
        assert status.pid is not None
        assert qemu_driver.list_vms() == [status]

        async with qemu_driver.session("life") as qmp:
            devices = {b["qdev"]: b["inserted"] for b in await qmp.execute("query-block")}
        assert devices["/machine/peripheral/vda-dev/virtio-backend"]["node-name"] == "vda"
        assert devices["/machine/peripheral/vdb-dev/virtio-backend"]["file"] == str(vm.disks[1])

        # The guest wrote its pattern with O_DIRECT + fsync, so QEMU has flushed it to the image.
        for offset in PATTERN_OFFSETS:
            assert read_image(vm.disks[0], offset, 64) == PATTERN_LINE * 2

        await qemu_driver.pause("life")
        assert qemu_driver.status("life").state == "paused"
        assert await qemu_driver.run_state("life") == "paused"
        await qemu_driver.resume("life")
        assert qemu_driver.status("life").state == "running"
        assert await qemu_driver.run_state("life") == "running"

        with pytest.raises(VMStateError, match="stop it"):
            qemu_driver.forget("life")
        started = time.monotonic()
        assert await qemu_driver.stop("life", timeout=30) == "powerdown"
        print(f"graceful stop took {time.monotonic() - started:.2f}s")
        assert "CAIRN: POWERDOWN" in vm.serial()
        assert qemu_driver.status("life").state == "stopped"
        assert read_state(qemu_driver.paths("life")).intended == "stopped"
        assert await qemu_driver.stop("life") == "already-stopped"
        with pytest.raises(VMNotRunningError):
            qemu_driver.session("life")

        whole = read_image(vm.disks[0], PATTERN_OFFSETS[1], PATTERN_SIZE)
        assert whole == PATTERN_LINE * (PATTERN_SIZE // len(PATTERN_LINE))

        qemu_driver.forget("life")
        assert not qemu_driver.paths("life").path.exists()
        assert qemu_driver.list_vms() == []
        assert vm.disks[0].exists()

    run(scenario())


def test_qmp_session_qemu_io_jobs_and_one_client_at_a_time(start_guest, qemu_driver, tmp_path):
    async def scenario():
        vm = await start_guest("qmp", mode="writer", append="cairn.writes=3 cairn.interval=0.1")
        async with qemu_driver.session("qmp") as qmp:
            await qmp.qemu_io("vda", "write -P 0xaa 2M 64k")
            # Flush so QEMU writes the new cluster's qcow2 metadata for the host-side read.
            await qmp.qemu_io("vda", "flush")
            with pytest.raises(QemuIOError, match="nonode"):
                await qmp.qemu_io("nonode", "read 0 1")
            with pytest.raises(QMPCommandError) as err:
                await qmp.execute("no-such-command")
            assert err.value.cls == "CommandNotFound"
            assert "VM status: running" in await qmp.hmp("info status")

            # blockdev-create jobs stay "concluded" until dismissed.
            new_file = tmp_path / "created.qcow2"
            await qmp.execute("blockdev-create", {"job-id": "mkfile", "options": {
                "driver": "file", "filename": str(new_file), "size": 0}})
            job = await qmp.wait_job("mkfile", "concluded", timeout=30)
            assert job is not None and job["status"] == "concluded" and "error" not in job
            await qmp.execute("job-dismiss", {"id": "mkfile"})
            await qmp.execute("blockdev-add", {"driver": "file", "node-name": "new-file",
                                               "filename": str(new_file)})
            await qmp.execute("blockdev-create", {"job-id": "mkqcow", "options": {
                "driver": "qcow2", "file": "new-file", "size": 1000}})
            with pytest.raises(JobFailedError, match="multiple of 512") as failed:
                await qmp.wait_job("mkqcow", timeout=30)
            assert failed.value.job_id == "mkqcow"

            # Block jobs dismiss themselves: the job vanishes and that counts as done.
            await qmp.execute("blockdev-add", {"driver": "null-co", "node-name": "sink",
                                               "size": 256 * MiB})
            await qmp.execute("blockdev-backup", {"job-id": "copy", "device": "vda",
                                                  "target": "sink", "sync": "full"})
            assert await qmp.wait_job("copy", timeout=30) is None
            statuses = [e["data"]["status"] for e in qmp.events.clear()
                        if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == "copy"]
            assert statuses[-1] == "null"

        assert read_image(vm.disks[0], 2 * MiB, 64 * 1024) == b"\xaa" * 64 * 1024
        # The writer mode's random 64 KiB chunks at 200 MiB + n MiB.
        await vm.wait_serial("CAIRN: WRITER-DONE")
        for n in range(3):
            assert read_image(vm.disks[0], (200 + n) * MiB, 4096) != bytes(4096)

        first = qemu_driver.session("qmp")
        await first.connect()
        second = qemu_driver.session("qmp", connect_timeout=30)
        waiting = asyncio.create_task(second.connect())
        impatient = qemu_driver.session("qmp", connect_timeout=0.5)
        with pytest.raises(QMPConnectError, match="another client"):
            await impatient.connect()
        assert not waiting.done()
        await first.close()
        await asyncio.wait_for(waiting, 10)
        assert (await second.execute("query-status"))["status"] == "running"
        await second.close()

    run(scenario())


def test_forced_stop_when_the_guest_ignores_the_power_button(start_guest, qemu_driver):
    async def scenario():
        vm = await start_guest("deaf", acpi=False)

        async def deaf_stop(timeout: float) -> float:
            started = time.monotonic()
            assert await qemu_driver.stop("deaf", timeout=timeout) == "quit"
            took = time.monotonic() - started
            assert qemu_driver.status("deaf").state == "stopped"
            assert took >= timeout
            return took

        short = await deaf_stop(0.5)
        assert "POWERDOWN" not in vm.serial()
        await qemu_driver.start(vm.spec)
        long = await deaf_stop(2.0)
        # The power button gets its timeout once and no more: 1.5 s more patience costs 1.5 s
        # more stop (waiting twice would cost 3). A difference cancels the machine's load, which
        # only adds the same QMP sessions and quit to both stops.
        assert 0.75 < long - short < 2.25, (short, long)

    run(scenario())


def test_crash_detection_and_the_stop_fallbacks(start_guest, qemu_driver):
    async def scenario():
        vm = await start_guest("crashy", wait_for=None)
        with pytest.raises(VMAlreadyRunningError):
            await qemu_driver.start(vm.spec)
        os.kill(qemu_driver.status("crashy").pid, signal.SIGKILL)
        await _until(lambda: qemu_driver.status("crashy").state == "crashed")
        # Another process (a later CLI call) sees the same thing.
        assert QemuDriver(qemu_driver.run_root).status("crashy").state == "crashed"

        # Restarting a crashed VM is allowed; --force goes straight to quit.
        await qemu_driver.start(vm.spec)
        assert await qemu_driver.stop("crashy", force=True) == "quit"
        assert qemu_driver.status("crashy").state == "stopped"

        # While another client holds the monitor, quit is sent as SIGTERM.
        impatient = QemuDriver(qemu_driver.run_root, qmp_timeout=1.0)
        await qemu_driver.start(vm.spec)
        async with qemu_driver.session("crashy"):
            assert await impatient.stop("crashy", force=True) == "quit"
        assert "terminating on signal 15" in qemu_driver.paths("crashy").qemu_log.read_text()

        # A QEMU that cannot answer QMP or act on SIGTERM (SIGSTOPped) gets SIGKILL.
        await qemu_driver.start(vm.spec)
        os.kill(qemu_driver.status("crashy").pid, signal.SIGSTOP)
        assert await impatient.stop("crashy", timeout=0.5) == "kill"
        assert qemu_driver.status("crashy").state == "stopped"

        # Stopping a crashed VM clears the crash.
        await qemu_driver.start(vm.spec)
        os.kill(qemu_driver.status("crashy").pid, signal.SIGKILL)
        await _until(lambda: qemu_driver.status("crashy").state == "crashed")
        assert await qemu_driver.stop("crashy") == "already-stopped"
        assert qemu_driver.status("crashy").state == "stopped"

    run(scenario())


def test_guest_poweroff_is_a_stop_not_a_crash(start_guest, qemu_driver):
    async def scenario():
        vm = await start_guest("selfoff", mode="poweroff", wait_for="CAIRN: POWEROFF")
        await _until(lambda: qemu_driver.status("selfoff").state != "running")
        assert qemu_driver.status("selfoff").state == "stopped"
        assert read_image(vm.disks[0], 0, 32) == PATTERN_LINE

    run(scenario())


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
