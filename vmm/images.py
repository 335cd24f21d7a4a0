"""Small qemu-img helpers."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from .errors import ImageError

IMAGE_FORMATS = ("qcow2", "raw")


def create_disk(path: str | os.PathLike[str], size_bytes: int | None, fmt: str = "qcow2",
                backing: str | os.PathLike[str] | None = None) -> None:
    """Create a new image; never overwrites an existing file.

    With `backing` (qcow2 only) the backing format is read from the backing image, and
    size_bytes=None means "as large as the backing image".
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
        cmd += ["-b", backing, "-F", image_info(backing)["format"]]
    elif size_bytes is None:
        raise ImageError(f"cannot create {path}: a size is needed without a backing file")
    cmd.append(path)
    if size_bytes is not None:
        if size_bytes <= 0:
            raise ImageError(f"cannot create {path}: size must be positive, got {size_bytes}")
        cmd.append(str(size_bytes))
    _qemu_img(cmd, f"qemu-img could not create {path}")


def image_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`qemu-img info --output=json -U`: works on images in use by a running VM (-U skips the
    lock), though such an image's metadata may lag behind what QEMU has in memory."""
    path = os.fspath(path)
    out = _qemu_img(["qemu-img", "info", "--output=json", "-U", path],
                    f"qemu-img cannot read {path}")
    info: dict[str, Any] = json.loads(out)
    return info


def backing_chain(path: str | os.PathLike[str]) -> list[str]:
    """The files an image reads from: itself first, then each backing file down the chain."""
    path = os.fspath(path)
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
