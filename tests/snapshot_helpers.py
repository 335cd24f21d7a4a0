"""Helpers for snapshot tests: known patterns into and out of qcow2 chains, with qemu-io."""
from __future__ import annotations

import subprocess


def has_pattern(image: str, pattern: int, offset: int, length: int) -> bool:
    """Whether the guest-visible bytes of `image` (its whole chain) are `pattern` there; -U:
    the image may be open in a running QEMU, whose flushed data this sees."""
    done = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} {length}",
                           image], check=False, capture_output=True, text=True)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def qemu_io_write(image: str, pattern: int, offset: int, length: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", image],
                   check=True, capture_output=True)
