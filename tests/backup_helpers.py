"""Helpers for backup tests: reference copies of a live disk and byte comparisons."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import blake3

from appliance.context import Appliance
from appliance.vms.devices import NewDisk
from vmm import QMPSession, disk_of_qdev


async def reference_copy(session: QMPSession, disk: str, target: Path, socket: Path) -> None:
    """Copy what the VM's disk holds right now, read through QEMU itself (the VM must be paused).

    Reading the qcow2 file from outside while QEMU has it open could see stale metadata.
    """
    node = await root_node(session, disk)
    await session.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(socket)}}})
    try:
        await session.execute("block-export-add", {"type": "nbd", "id": "ref", "node-name": node,
                                                   "name": "ref", "writable": False})
        await asyncio.to_thread(subprocess.run, ["qemu-img", "convert", "-f", "raw", "-O", "raw",
                                f"nbd+unix:///ref?socket={socket}", str(target)], check=True, capture_output=True)
        await session.execute("block-export-del", {"id": "ref"})
    finally:
        await session.execute("nbd-server-stop")


async def root_node(session: QMPSession, disk: str) -> str:
    for entry in await session.execute("query-block"):
        if disk_of_qdev(entry.get("qdev", "")) == disk:
            return entry["inserted"]["node-name"]
    raise AssertionError(f"no device for {disk}")


def same_content(a: Path, b: Path, fmt_b: str = "raw") -> bool:
    """Byte equality of two images (qemu-img compare reads both through the block layer)."""
    proc = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt_b, str(a), str(b)], check=False)
    return proc.returncode == 0


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512


CHUNK = 4 << 20
MiB = 1 << 20


def run(coro):
    return asyncio.run(coro)


def new_guest_vm(appliance: Appliance, guest_kernel, name: str, disks: list[int], append: str = "") -> None:
    """`append` adds kernel arguments, e.g. "cairn.agent=on cairn.fs=vdb" (see tests/guest/init)."""
    appliance.vms.create(name, disks, kernel=str(guest_kernel.kernel), initrd=str(guest_kernel.initrd),
                         append=f"console=ttyS0 quiet cairn.mode=idle {append}".strip())


def boot_guest_vm(appliance: Appliance, guest_kernel, name: str, disks: list[int], append: str = "") -> None:
    """Create and start a guest VM; return once it has written its boot pattern and is ready."""
    new_guest_vm(appliance, guest_kernel, name, disks, append)
    run(appliance.vms.start(name))
    wait_serial(appliance, name, "CAIRN: READY")


def wait_serial(appliance: Appliance, name: str, marker: str, timeout: float = 90) -> None:
    log = appliance.settings.run_dir / name / "serial.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and marker in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"guest never printed {marker}: {log.read_text(errors='replace')[-2000:]}")


async def write_pattern(appliance: Appliance, vm: str, disk: str, pattern: int, offset: int, length: int) -> None:
    async with appliance.driver.session(vm) as s:
        await s.qemu_io(await root_node(s, disk), f"write -P {pattern:#x} {offset} {length}")


async def paused_backup_with_reference(appliance: Appliance, vm: str, disks: list[str], refdir: Path,
                                       full: bool = False):
    """Pause, copy each disk as it is, back up at that same instant, resume."""
    async with appliance.driver.session(vm) as s:
        await s.execute("stop")
        for d in disks:
            await reference_copy(s, d, refdir / f"{d}.raw", refdir / "ref.sock")
    result = await appliance.backups.create(appliance.vms.spec(vm), full=full)
    async with appliance.driver.session(vm) as s:
        await s.execute("cont")
    return result.manifest


def image_bitmaps(image: str | Path) -> list[str]:
    """Names of the bitmaps stored in a qcow2 file (readable while a VM has it open)."""
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(image)], capture_output=True,
                                     text=True, check=True).stdout)
    return [b["name"] for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]


def add_disk(appliance: Appliance, vm: str, size: int) -> str:
    """Give a stopped VM one more blank qcow2 disk, as `cairn vm disk add` does (from its next
    start); the new disk's path."""
    return appliance.vms.hardware.add_disk(vm, NewDisk(size=size)).path


def image_to_raw(image: str | Path, raw: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    return raw


def disk_digests(appliance: Appliance, backup_id: str) -> dict[str, bytes]:
    """Each disk's content in a backup as one BLAKE3, read through its map (holes as zeros)."""
    store = appliance.store
    manifest = store.get_backup(backup_id)
    digests = {}
    for disk in manifest.disks:
        disk_map = store.disk_map(manifest, disk)
        hasher, position = blake3.blake3(), 0
        for e in disk_map.entries():
            hasher.update(bytes(e.offset - position))
            hasher.update(store.read_block(manifest, e.block_id)[e.block_offset:e.block_offset + e.length])
            position = e.end
        hasher.update(bytes(disk_map.size - position))
        digests[disk.name] = hasher.digest()
    return digests
