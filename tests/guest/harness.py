"""Test-side helpers for guests booted from tests/guest: what they write, how to wait for them,
and how to look at disk images from the host."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmm import QemuDriver, VMSpec

MiB = 1 << 20
# TCG on a shared 2-core machine: a boot takes ~3 s when quiet, far more when the cores are busy.
BOOT_TIMEOUT = 60.0
# What /init writes at boot: 1 MiB of this 32-byte line at each offset of /dev/vda.
PATTERN_LINE = b"CAIRN-PATTERN-0123456789ABCDEF-\n"
PATTERN_OFFSETS = (0, 100 * MiB)
PATTERN_SIZE = MiB


@dataclass
class GuestVM:
    driver: QemuDriver
    spec: VMSpec
    disks: list[Path]
    spawned_at: float  # time.monotonic() right before QemuDriver.start()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def serial_log(self) -> Path:
        return self.driver.paths(self.name).serial_log

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait_serial(self, marker: str, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait until `marker` appears on the serial console; return seconds since spawn.

        Fails at once if QEMU is gone, instead of waiting for the timeout."""
        deadline = time.monotonic() + timeout
        while marker not in self.serial():
            if self.driver.status(self.name).state not in ("running", "paused"):
                raise AssertionError(f"{self.name}: QEMU is gone while waiting for {marker!r}; "
                                     f"serial console:\n{self.serial()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {marker!r} within {timeout:g}s; "
                                     f"serial console:\n{self.serial()}")
            await asyncio.sleep(0.05)
        return time.monotonic() - self.spawned_at


def read_image(path: Path | str, offset: int, length: int, fmt: str = "qcow2") -> bytes:
    """Read guest-visible bytes of an image with `qemu-io -U -r` (works while a VM uses it,
    for data QEMU has flushed)."""
    done = subprocess.run(["qemu-io", "-U", "-r", "-f", fmt, "-c", f"read -v {offset} {length}",
                           str(path)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"qemu-io read of {path} failed: {done.stderr.strip()}")
    data = bytearray()
    for line in done.stdout.splitlines():
        # "00000000:  43 41 49 ...  CAIRN..." : up to 16 hex bytes, then an ASCII column
        # that may itself contain spaces, so take only as many tokens as bytes are due.
        head, sep, rest = line.partition(":  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{8,16}", head) or len(data) >= length:
            continue
        due = min(16, length - len(data))
        data += bytes.fromhex(" ".join(rest.split(" ")[:due]))
    if len(data) != length:
        raise AssertionError(f"qemu-io returned {len(data)} of {length} bytes:\n{done.stdout}")
    return bytes(data)
