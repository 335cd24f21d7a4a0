"""Which file a qcow2 image reads below itself, from its header, without running qemu-img.

Operations that change or remove a file ask first which VMs read it (appliance/vms/readers.py),
and a VM's start asks it of every other VM's chains: one qemu-img run per chain (~20 ms) made a
start's cost grow with the number of VMs. The answer is a few bytes at the front of each image:

    offset  0  magic "QFI\\xfb"       offset 16  backing file name length (u32)
    offset  4  version (2 or 3)       offset 20  cluster bits (u32)
    offset  8  backing file name offset (u64), 0: none
    header extensions follow the header (v2: at byte 72; v3: at its header_length, u32 at 100),
    each type (u32), length (u32), data padded to 8 bytes; type 0xE2792ACA names the backing
    file's format. All numbers big-endian (docs/interop/qcow2.txt in QEMU's sources).

A relative backing name is relative to the directory of the image naming it, as in QEMU. Only
the plain case is read here: a qcow2 or raw image whose backing file is a plain path, its format
named as qcow2 or raw or, unnamed, told apart by its magic as QEMU's probe would. Anything else
(a `json:` or protocol filename, another format, a missing file, a loop) answers None and the
caller asks qemu-img, whose answer (or error) it then is.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

MAGIC = b"QFI\xfb"
BACKING_FORMAT_EXTENSION = 0xE2792ACA
HEADER_V2_LENGTH = 72
PROBE_SIZE = 2048   # what QEMU's probe reads of a file
MAX_CHAIN = 256   # deeper than any chain Cairn makes; beyond it qemu-img decides


def chain(path: str, other_format: Callable[[bytes], str | None]) -> list[str] | None:
    """The files `path` reads, itself first (as qemu-img info --backing-chain names them), or
    None when this module does not read that chain alone. `other_format(first bytes)` names a
    format QEMU's probe would see besides qcow2 and raw (None: raw)."""
    files = [path]
    fmt: str | None = None   # None: probe by the magic, as QEMU does without a format
    while len(files) <= MAX_CHAIN:
        header = _head(files[-1])
        if header is None:
            return None
        if fmt is None:
            if not header.startswith(MAGIC) and other_format(header) is not None:
                return None
            fmt = "qcow2" if header.startswith(MAGIC) else "raw"
        if fmt == "raw":
            return files
        if not header.startswith(MAGIC):
            return None
        backing = _backing(header, files[-1])
        if backing is None:
            return None
        name, fmt = backing
        if not name:
            return files
        if name in files or fmt not in (None, "qcow2", "raw"):
            return None
        files.append(name)
    return None


def _head(path: str) -> bytes | None:
    """What QEMU's probe reads of a file and, for a qcow2, its first cluster: the header, its
    extensions and the backing file's name."""
    try:
        with open(path, "rb") as image:
            start = image.read(PROBE_SIZE)
            if not start.startswith(MAGIC) or len(start) < HEADER_V2_LENGTH:
                return start
            cluster = 1 << min(struct.unpack_from(">I", start, 20)[0], 21)
            return start + image.read(max(cluster - len(start), 0))
    except OSError:
        return None


def _backing(header: bytes, path: str) -> tuple[str, str | None] | None:
    """(backing file as QEMU resolves it, its format if named), ("", None) for none, or None
    when it is not a plain path this module follows."""
    version, offset, size = struct.unpack_from(">IQI", header, 4)
    if version not in (2, 3):
        return None
    if offset == 0:
        return "", None
    try:
        name = header[offset:offset + size].decode()
    except UnicodeDecodeError:
        return None
    if len(name) != size or not name or _has_protocol(name):
        return None
    resolved = name if os.path.isabs(name) else os.path.join(os.path.dirname(path), name)
    return resolved, _backing_format(header, version)


def _has_protocol(name: str) -> bool:
    """QEMU takes "proto:rest" (a ':' before any '/') for a protocol, "json:{...}" included."""
    colon = name.find(":")
    return colon >= 0 and ("/" not in name[:colon])


def _backing_format(header: bytes, version: int) -> str | None:
    position = HEADER_V2_LENGTH if version == 2 else struct.unpack_from(">I", header, 100)[0]
    while position + 8 <= len(header):
        kind, length = struct.unpack_from(">II", header, position)
        if kind == 0:
            return None
        if kind == BACKING_FORMAT_EXTENSION:
            return header[position + 8:position + 8 + length].decode(errors="replace")
        position += 8 + (length + 7) // 8 * 8
    return None
