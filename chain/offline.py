"""Changing the chains of a stopped VM (or layers a running VM does not have open) with qemu-img.

    snapshot: qemu-img create -f qcow2 -F <fmt> -b <top> <overlay>
              qemu-img bitmap --add -g <g> <overlay> B; --merge B -b <top> -F <fmt> <overlay> B
              (each recording bitmap B; <top> keeps a frozen copy, as after a live snapshot)
    commit:   qemu-img commit -d -b <base> [-r rate] <top>; for the active layer the same three
              bitmap steps carry B from <top> to <base> afterwards (so the commit's own writes
              into <base> do not dirty it: the guest-visible data did not change)
    pull:     qemu-img rebase -b <new backing> -F <fmt> <child> (copies what the child does not
              override); the child's recording bitmaps are disabled meanwhile for the same reason
    re-point: qemu-img rebase -u -b <file> -F <fmt> <child>, where the data is already the same
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vmm import image_info

from .errors import ChainError


@dataclass(frozen=True)
class ImageLayer:
    file: str
    format: str
    backing: str | None
    backing_format: str | None
    recording_bitmaps: list[dict]     # qemu-img info's {name, granularity, flags}


def read_layer(file: str) -> ImageLayer:
    info = image_info(file)
    bitmaps = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return ImageLayer(file, info["format"], info.get("full-backing-filename"), info.get("backing-filename-format"),
                      [b for b in bitmaps if "auto" in b["flags"] and "in-use" not in b["flags"]])


def create_overlay(top: str, overlay: str) -> None:
    """A new empty layer on `top` with a copy of its recording bitmaps."""
    layer = read_layer(top)
    _qemu_img("create", "-q", "-f", "qcow2", "-F", layer.format, "-b", top, overlay)
    try:
        carry_bitmaps(layer, overlay)
    except ChainError:
        os.unlink(overlay)
        raise


def commit(top: str, base: str, rate_limit: int | None, active: bool) -> None:
    """Write `top`'s data into `base` (its backing); `top` stays as it was, to be deleted."""
    rate = ["-r", str(rate_limit)] if rate_limit else []
    _qemu_img("commit", "-q", "-d", *rate, "-b", base, top)
    if active:
        source = read_layer(top)
        carry_bitmaps(source, base)
        # As in live.drop_stale_actions: enabled bitmaps the base kept from snapshots missed
        # every write above it, and the base is the active layer now.
        carried = {b["name"] for b in source.recording_bitmaps}
        for bitmap in read_layer(base).recording_bitmaps:
            if bitmap["name"] not in carried:
                _qemu_img("bitmap", "--remove", base, bitmap["name"])


def pull(child: str, new_backing: str | None, new_backing_format: str | None) -> None:
    """Copy into `child` what it reads from its backing and `new_backing` does not give it."""
    backing = ["-b", new_backing, "-F", new_backing_format] if new_backing else ["-b", ""]
    with _recording_paused(read_layer(child)):
        _qemu_img("rebase", "-q", *backing, child)


def repoint(child: str, backing: str) -> None:
    """Change `child`'s backing file name only: the new backing already has the same data."""
    _qemu_img("rebase", "-q", "-u", "-b", backing, "-F", read_layer(backing).format, child)


def carry_bitmaps(source: ImageLayer, target: str) -> None:
    """Give `target` each recording bitmap of `source`; a frozen copy of the same name that a
    live snapshot left there is cleared first (see live.carry_bitmap_actions)."""
    info = image_info(target)
    present = {b["name"] for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])}
    for bitmap in source.recording_bitmaps:
        name = bitmap["name"]
        if name in present:
            _qemu_img("bitmap", "--clear", target, name)
        else:
            _qemu_img("bitmap", "--add", "-g", str(bitmap["granularity"]), target, name)
        _qemu_img("bitmap", "--merge", name, "-b", source.file, "-F", source.format, target, name)


@contextmanager
def _recording_paused(layer: ImageLayer) -> Iterator[None]:
    for bitmap in layer.recording_bitmaps:
        _qemu_img("bitmap", "--disable", layer.file, bitmap["name"])
    try:
        yield
    finally:
        for bitmap in layer.recording_bitmaps:
            _qemu_img("bitmap", "--enable", layer.file, bitmap["name"])


def _qemu_img(*args: str) -> None:
    done = subprocess.run(["qemu-img", *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise ChainError(f"qemu-img {' '.join(args)} failed: {done.stderr.strip()}")
