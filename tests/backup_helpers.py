"""Helpers for backup tests: reference copies of a live disk and byte comparisons."""
from __future__ import annotations

import subprocess
from pathlib import Path

from vmm import QMPSession


async def reference_copy(session: QMPSession, disk: str, target: Path, socket: Path) -> None:
    """Copy what the VM's disk holds right now, read through QEMU itself (the VM must be paused).

    Reading the qcow2 file from outside while QEMU has it open could see stale metadata.
    """
    node = await root_node(session, disk)
    await session.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(socket)}}})
    try:
        await session.execute("block-export-add", {"type": "nbd", "id": "ref", "node-name": node,
                                                   "name": "ref", "writable": False})
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd+unix:///ref?socket={socket}",
                        str(target)], check=True, capture_output=True)
        await session.execute("block-export-del", {"id": "ref"})
    finally:
        await session.execute("nbd-server-stop")


async def root_node(session: QMPSession, disk: str) -> str:
    for entry in await session.execute("query-block"):
        if entry.get("qdev", "").startswith(f"/machine/peripheral/{disk}-dev"):
            return entry["inserted"]["node-name"]
    raise AssertionError(f"no device for {disk}")


def same_content(a: Path, b: Path, fmt_b: str = "raw") -> bool:
    """Byte equality of two images (qemu-img compare reads both through the block layer)."""
    proc = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", fmt_b, str(a), str(b)])
    return proc.returncode == 0


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512
