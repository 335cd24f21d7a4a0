"""Small qemu-img helpers, and the inspection of images that come from outside.

An image someone else made is data, never instructions: qemu-img's format probe would follow
what a vmdk descriptor or a qcow2 header names (extents, a data file, a backing file, `json:`
filenames) and open it on this host. So an outside image's format is decided here from its
first bytes, never by a probe nor by the client: a qcow2 magic means qcow2, any other image
format's magic is refused, and everything else is raw. The qcow2 is then read with qemu-img
told its format (which opens no other file) and refused unless it stands alone; from then on
every use names the format explicitly (inspect_image, create_disk's backing_format).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from typing import Any

from . import qcow2
from .errors import ImageError
from .network_disks import is_network

IMAGE_FORMATS = ("qcow2", "raw")
# A disk holds a guest's data: readable by the appliance's user alone, whatever the umask.
DISK_MODE = 0o600
QCOW2_MAGIC = b"QFI\xfb"
# The formats qemu's probe recognizes (block/*.c, their *_probe), by what their first bytes hold.
FOREIGN_MAGIC = ((b"KDMV", "vmdk"), (b"COWD", "vmdk"), (b"vhdxfile", "vhdx"), (b"conectix", "vpc"),
                 (b"QED\0", "qed"), (b"LUKS\xba\xbe", "luks"), (b"WithoutFreeSpace", "parallels"),
                 (b"WithouFreSpacExt", "parallels"), (b"Bochs Virtual HD Image", "bochs"),
                 (b"#!/bin/sh\n#V2.0 Format\n", "cloop"))
VDI_SIGNATURE = (0x40, 0xBEDA107F)   # offset and little-endian value of a VDI header's signature
PROBE_SIZE = 2048                    # what qemu's probe reads of a file


def create_disk(path: str | os.PathLike[str], size_bytes: int | None, fmt: str = "qcow2",
                backing: str | os.PathLike[str] | None = None, backing_format: str | None = None) -> None:
    """Create a new image; never overwrites an existing file.

    With `backing` (qcow2 only), size_bytes=None means "as large as the backing image". Give
    `backing_format` for a backing image that came from outside (a library image): without it
    the backing image's format is probed, which only Cairn's own images may be.
    """
    path = os.fspath(path)
    if fmt not in IMAGE_FORMATS:
        raise ImageError(f"cannot create {path}: format {fmt!r} is not one of "
                         f"{', '.join(IMAGE_FORMATS)}")
    if os.path.lexists(path):
        raise ImageError(f"cannot create {path}: the file already exists")
    cmd = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        if fmt != "qcow2":
            raise ImageError(f"cannot create {path}: only qcow2 images can have a backing file")
        backing = os.path.abspath(backing)
        cmd += ["-b", backing, "-F", backing_format or image_info(backing)["format"]]
    elif size_bytes is None:
        raise ImageError(f"cannot create {path}: a size is needed without a backing file")
    cmd.append(path)
    if size_bytes is not None:
        if size_bytes <= 0:
            raise ImageError(f"cannot create {path}: size must be positive, got {size_bytes}")
        cmd.append(str(size_bytes))
    _qemu_img(cmd, f"qemu-img could not create {path}")
    os.chmod(path, DISK_MODE)


def image_info(path: str | os.PathLike[str], fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img info --output=json -U`: works on images in use by a running VM (-U skips the
    lock), though such an image's metadata may lag behind what QEMU has in memory. Without
    `fmt` the format is probed: only for Cairn's own images (see inspect_image)."""
    path = os.fspath(path)
    out = _qemu_img(["qemu-img", "info", "--output=json", "-U", *(["-f", fmt] if fmt else []), path],
                    f"qemu-img cannot read {path}")
    info: dict[str, Any] = json.loads(out)
    return info


def sniff_format(path: str | os.PathLike[str], name: str) -> str:
    """The format of an image from outside, from its first bytes: qcow2 or raw; another image
    format is refused (ImageError), before anything reads what it might name."""
    with open(path, "rb") as file:
        head = file.read(PROBE_SIZE)
    if head.startswith(QCOW2_MAGIC):
        return "qcow2"
    if (foreign := _foreign_format(head)) is not None:
        raise ImageError(f"image {name!r} is a {foreign} image, which may name files outside itself: convert "
                         "it to a standalone qcow2 first (qemu-img convert -O qcow2) and upload that")
    return "raw"


def inspect_image(path: str | os.PathLike[str], fmt: str, name: str) -> dict[str, Any]:
    """qemu-img info of an image whose format is known (sniff_format, or the library's record),
    refused unless it stands alone: no backing file, no external data file, no encryption."""
    if fmt not in IMAGE_FORMATS:
        raise ImageError(f"image {name!r}: format {fmt!r} is not one of {', '.join(IMAGE_FORMATS)}")
    info = image_info(path, fmt)
    specific = (info.get("format-specific") or {}).get("data") or {}
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageError(f"image {name!r} has a backing file ({info.get('backing-filename')}); import a "
                         "standalone image (qemu-img convert flattens it)")
    if specific.get("data-file"):
        raise ImageError(f"image {name!r} keeps its data in an external data file ({specific['data-file']}); "
                         "import a standalone image (qemu-img convert -O qcow2 makes one)")
    if info.get("encrypted"):
        raise ImageError(f"image {name!r} is encrypted: import it decrypted")
    return info


def _foreign_format(head: bytes) -> str | None:
    """The format other than qcow2 and raw that qemu's probe would see in these first bytes."""
    foreign = next((fmt for magic, fmt in FOREIGN_MAGIC if head.startswith(magic)), None)
    offset, signature = VDI_SIGNATURE
    if foreign is None and len(head) >= offset + 4 and struct.unpack_from("<I", head, offset)[0] == signature:
        foreign = "vdi"
    if foreign is None and _vmdk_descriptor(head):
        foreign = "vmdk"
    return foreign


def _vmdk_descriptor(head: bytes) -> bool:
    """Whether qemu would take this text for a vmdk descriptor: after comment and blank lines,
    a `version=` line (vmdk_probe, read a little more widely)."""
    for line in head.split(b"\n"):
        stripped = line.strip(b" \r")
        if line.startswith(b"#") or not stripped:
            continue
        return stripped.startswith(b"version=")
    return False


def backing_chain(path: str | os.PathLike[str]) -> list[str]:
    """The files an image reads from: itself first, then each backing file down the chain.
    Read from the qcow2 headers (qcow2.py) when the chain is plain, else by qemu-img."""
    path = os.fspath(path)
    if is_network(path):
        return [path]   # raw by definition (network_disks.py): never probed, no backing file
    if (files := qcow2.chain(path, _foreign_format)) is not None:
        return files
    out = _qemu_img(["qemu-img", "info", "--backing-chain", "--output=json", "-U", path],
                    f"qemu-img cannot read {path}")
    return [str(layer["filename"]) for layer in json.loads(out)]


def convert_image(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                  fmt: str = "qcow2") -> None:
    """Copy an image with its whole backing chain flattened into one standalone file."""
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.lexists(dst):
        raise ImageError(f"cannot create {dst}: the file already exists")
    _qemu_img(["qemu-img", "convert", "-O", fmt, src, dst], f"qemu-img could not copy {src}")
    os.chmod(dst, DISK_MODE)


def copy_into(src: str, src_format: str | None, target: str) -> None:
    """Copy an image, its backing chain flattened, into an existing raw disk that reads as zeros (a
    new RBD image): zeros are skipped, so the target stays thin."""
    _qemu_img(["qemu-img", "convert", "-n", "--target-is-zero", "-W", "-m", "16",
               *(["-f", src_format] if src_format else []), "-O", "raw", src, target],
              f"qemu-img could not copy {src} into {target}")


def resize_image(path: str | os.PathLike[str], size_bytes: int) -> None:
    """Grow an image that no running VM uses; shrinking is refused (it would cut data)."""
    path = os.fspath(path)
    current = int(image_info(path)["virtual-size"])
    if size_bytes < current:
        raise ImageError(f"cannot shrink {path} from {current} to {size_bytes} bytes")
    if size_bytes > current:
        _qemu_img(["qemu-img", "resize", "-q", path, str(size_bytes)],
                  f"qemu-img could not resize {path}")


def _qemu_img(cmd: list[str], message: str) -> str:
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise ImageError(f"{message}: qemu-img is not installed", cmd) from err
    if done.returncode != 0:
        raise ImageError(message, cmd, done.stderr)
    return done.stdout
