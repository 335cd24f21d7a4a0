"""Helpers for restore tests."""
from __future__ import annotations

import subprocess
from pathlib import Path


def backup_file(store, vm: str, disk: str, image: Path) -> str:
    """A full backup of a raw image file, block by block (the store finds the zero ones)."""
    size = image.stat().st_size
    with store.begin_backup(vm) as session, open(image, "rb") as f:
        writer = session.disk(disk, size)
        for offset in range(0, size, writer.block_size):
            data = f.read(writer.block_size)
            writer.record_read(len(data))
            writer.put(offset, data)
        return session.commit().backup_id


def same_image(a: Path | str, b: Path | str) -> bool:
    """Guest-visible byte equality of two images of any format (qemu-img compare)."""
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0


# 16-bit code the BIOS loads at 0x7c00: print the readiness marker on COM1 (port 0x3f8), halt.
BOOT_CODE = bytes([
    0xFA,                    # cli
    0x31, 0xC0,              # xor ax, ax
    0x8E, 0xD8,              # mov ds, ax
    0xBE, 0x1D, 0x7C,        # mov si, message (0x7c1d)
    0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
    0xAC,                    # next: lodsb
    0x84, 0xC0,              # test al, al
    0x74, 0x03,              # jz halt
    0xEE,                    # out dx, al
    0xEB, 0xF8,              # jmp next
    0xF4,                    # halt: hlt
    0xEB, 0xFD,              # jmp halt
]).ljust(0x1D, b"\x90") + b"CAIRN: READY\r\n\0"


def boot_sector() -> bytes:
    return BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa"
