"""Export the disks of a stopped VM with qemu-nbd, checkpoints kept with qemu-img.

Nothing writes to the images while the VM is down, so "the instant" is simply now:
the new checkpoint bitmap is added and the previous one frozen before the export
starts, and qemu-nbd publishes the frozen one for the incremental read.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from procs import Holding
from vmm.errors import ImageError
from vmm.network_disks import is_network, probe

from .errors import ExportError
from .points import (
    Checkpoint,
    DiskPoint,
    backing_files,
    bitmap_granularity,
    checkpoint_problem,
    plan_bitmap_repair,
)
from .qemu_nbd import QemuNbd, qemu_img


@dataclass
class ImageState:
    format: str
    size: int
    bitmaps: dict[str, dict]   # in the shape bitmap_problem expects
    chain: list[str]           # the image and its backing files, top first


def image_state(path: str) -> ImageState:
    chain = json.loads(qemu_img("info", "--backing-chain", "--output=json", "-U", path))
    top = chain[0]
    found = top.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return ImageState(top["format"], top["virtual-size"],
                      {b["name"]: {"recording": "auto" in b["flags"], "inconsistent": "in-use" in b["flags"]}
                       for b in found},
                      backing_files(chain))


def network_state(disk: str, path: str) -> ImageState:
    """A network disk (RBD, NBD) is raw, never probed (its guest may have written any header), and
    holds no bitmap; it is reached with a timeout (vmm.network_disks.probe)."""
    try:
        return ImageState("raw", probe(path), {}, [path])
    except ImageError as err:
        raise ExportError(f"disk {disk}: {err}") from None


class OfflineExport:
    """`since` names, per disk, the checkpoint the ledger knows (None: read in full); it is checked
    against the image before it is trusted. Disks in `full` are read in full whatever it says."""

    def __init__(self, images: dict[str, str], checkpoint: str, since: dict[str, Checkpoint | None],
                 full: Collection[str] = ()):
        self.images = images
        self.checkpoint = checkpoint
        self.expected = dict(since)
        self.since: dict[str, str | None] = {d: c.bitmap if c else None for d, c in since.items()}
        self.full = set(full)
        self._servers: list[QemuNbd] = []
        # Socket paths must fit in 107 bytes, which a deep data directory may not: use /tmp.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cairn-nbd-"))
        self._holding = Holding(f"export of stopped disks {', '.join(images.values())}")
        self._holding.remove(self._socket_dir)
        self._tracked: set[str] = set()
        self.notes: list[str] = []   # what open() had to repair, for the backup's record

    def open(self) -> list[DiskPoint]:
        points = []
        states = {}
        for disk, path in self.images.items():
            if is_network(path):
                states[disk] = network_state(disk, path)
                continue
            if not os.path.exists(path):
                raise ExportError(f"disk {disk}: image {path} does not exist")
            states[disk] = self._reclaim(disk, path, image_state(path))
        try:
            for disk, state in states.items():
                points.append(self._prepare(disk, self.images[disk], state))
            for point in points:
                self._serve(point.disk, self.images[point.disk], states[point.disk].format, point.since)
        except Exception:
            self.close(success=False)
            raise
        return points

    def close(self, success: bool) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._holding.close()
        for disk in self._tracked:
            path, old = self.images[disk], self.since[disk]
            if success:
                if old:
                    qemu_img("bitmap", "--remove", path, old)
                continue
            if old:
                qemu_img("bitmap", "--merge", self.checkpoint, "--enable", path, old)
            qemu_img("bitmap", "--remove", path, self.checkpoint)
        self._tracked.clear()

    def _reclaim(self, disk: str, path: str, state: ImageState) -> ImageState:
        """Repair the checkpoint bitmaps an interrupted backup left in the image."""
        base = self.since.get(disk)
        repair = plan_bitmap_repair(state.bitmaps, base)
        if not repair.needed:
            return state
        # Without a base the plan merges into nothing and enables nothing.
        if base is not None:
            for name in repair.merge:
                qemu_img("bitmap", "--merge", name, path, base)
        for name in repair.remove:
            qemu_img("bitmap", "--remove", path, name)
        if base is not None and repair.enable_base:
            qemu_img("bitmap", "--enable", path, base)
        self.notes.append(repair.describe(disk, base))
        return image_state(path)

    def _prepare(self, disk: str, path: str, state: ImageState) -> DiskPoint:
        point = DiskPoint(disk, state.size, f"nbd+unix:///{disk}?socket={self._socket(disk)}", None,
                          checkpoint_file=path)
        wanted = self.since.get(disk)
        if state.format == "raw" and not is_network(path):   # an NBD or RBD disk is read through the export
            point.raw_file = path
        if state.format != "qcow2":
            point.fallback_reason = (f"{disk} is {state.format}: no dirty bitmap is stored in it (only a running VM's "
                                     "QEMU keeps one), full read")
            self.since[disk] = None
            return point
        problem = None
        known = self.expected.get(disk)  # whose bitmap `wanted` is
        if wanted and known is not None and disk not in self.full:
            problem = checkpoint_problem(state.bitmaps, state.chain, known)
        if wanted and (problem or disk in self.full):
            if problem:
                point.fallback_reason = f"{disk}: {problem}; full read"
            if wanted in state.bitmaps:
                # Unused or distrusted, it must not linger as the base of a later incremental.
                qemu_img("bitmap", "--remove", path, wanted)
            wanted = None
        self.since[disk] = wanted
        point.since = wanted
        if wanted:
            qemu_img("bitmap", "--disable", path, wanted)
        qemu_img("bitmap", "--add", "-g", str(bitmap_granularity(state.size)), path, self.checkpoint)
        self._tracked.add(disk)
        point.checkpoint = self.checkpoint
        return point

    def _socket(self, disk: str) -> Path:
        return self._socket_dir / f"{disk}.sock"

    def _serve(self, disk: str, path: str, fmt: str, bitmap: str | None) -> None:
        self._servers.append(QemuNbd(path, fmt, disk, self._socket(disk), holding=self._holding, bitmap=bitmap))
