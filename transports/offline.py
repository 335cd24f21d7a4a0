"""Export the disks of a stopped VM with qemu-nbd, checkpoints kept with qemu-img.

Nothing writes to the images while the VM is down, so "the instant" is simply now:
the new checkpoint bitmap is added and the previous one frozen before the export
starts, and qemu-nbd publishes the frozen one for the incremental read.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .fleece import ExportError
from .points import DiskPoint, bitmap_problem, plan_bitmap_repair


@dataclass
class ImageState:
    format: str
    size: int
    bitmaps: dict[str, dict]   # in the shape bitmap_problem expects


def image_state(path: str) -> ImageState:
    info = json.loads(_run(["qemu-img", "info", "--output=json", "-U", path]))
    found = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return ImageState(info["format"], info["virtual-size"],
                      {b["name"]: {"recording": "auto" in b["flags"], "inconsistent": "in-use" in b["flags"]}
                       for b in found})


class OfflineExport:
    def __init__(self, images: dict[str, str], checkpoint: str, since: dict[str, str | None]):
        self.images = images
        self.checkpoint = checkpoint
        self.since = dict(since)
        self._servers: list[subprocess.Popen] = []
        # Socket paths must fit in 107 bytes, which a deep data directory may not: use /tmp.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cairn-nbd-"))
        self._tracked: set[str] = set()
        self.notes: list[str] = []   # what open() had to repair, for the backup's record

    def open(self) -> list[DiskPoint]:
        points = []
        states = {}
        for disk, path in self.images.items():
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
            server.terminate()
            server.wait(timeout=30)
        self._servers.clear()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        for disk in self._tracked:
            path, old = self.images[disk], self.since[disk]
            if success:
                if old:
                    _run(["qemu-img", "bitmap", "--remove", path, old])
                continue
            if old:
                _run(["qemu-img", "bitmap", "--merge", self.checkpoint, "--enable", path, old])
            _run(["qemu-img", "bitmap", "--remove", path, self.checkpoint])
        self._tracked.clear()

    def _reclaim(self, disk: str, path: str, state: ImageState) -> ImageState:
        """Repair the checkpoint bitmaps an interrupted backup left in the image."""
        base = self.since.get(disk)
        repair = plan_bitmap_repair(state.bitmaps, base)
        if not repair.needed:
            return state
        for name in repair.merge:
            _run(["qemu-img", "bitmap", "--merge", name, path, base])
        for name in repair.remove:
            _run(["qemu-img", "bitmap", "--remove", path, name])
        if repair.enable_base:
            _run(["qemu-img", "bitmap", "--enable", path, base])
        self.notes.append(repair.describe(disk, base))
        return image_state(path)

    def _prepare(self, disk: str, path: str, state: ImageState) -> DiskPoint:
        point = DiskPoint(disk, state.size, f"nbd+unix:///{disk}?socket={self._socket(disk)}", None)
        wanted = self.since.get(disk)
        if state.format != "qcow2":
            point.fallback_reason = f"{disk} is {state.format}: no persistent dirty bitmap, full read"
            self.since[disk] = None
            return point
        problem = bitmap_problem(state.bitmaps, wanted) if wanted else None
        if problem:
            point.fallback_reason = f"{disk}: {problem}; full read"
            wanted = None
        self.since[disk] = wanted
        point.since = wanted
        if wanted:
            _run(["qemu-img", "bitmap", "--disable", path, wanted])
        _run(["qemu-img", "bitmap", "--add", path, self.checkpoint])
        self._tracked.add(disk)
        point.checkpoint = self.checkpoint
        return point

    def _socket(self, disk: str) -> Path:
        return self._socket_dir / f"{disk}.sock"

    def _serve(self, disk: str, path: str, fmt: str, bitmap: str | None) -> None:
        sock = self._socket(disk)
        sock.unlink(missing_ok=True)
        cmd = ["qemu-nbd", "--read-only", "--persistent", "--shared=4", "--format", fmt,
               "--export-name", disk, "--socket", str(sock), path]
        if bitmap:
            cmd[1:1] = ["--bitmap", bitmap]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._servers.append(server)
        deadline = time.monotonic() + 30
        while not sock.exists():
            if server.poll() is not None:
                raise ExportError(f"qemu-nbd could not export {path}: {server.stderr.read().decode().strip()}")
            if time.monotonic() > deadline:
                raise ExportError(f"qemu-nbd did not start for {path}")
            time.sleep(0.02)


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExportError(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout
