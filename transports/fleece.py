"""Point-in-time NBD export of a running VM's disks (pull mode, "fleecing").

In the freezing transaction (live.py) each disk starts a `blockdev-backup sync=none` into a
scratch overlay: copy-before-write keeps the old data there while the guest goes on writing.
The overlay is exported over QEMU's NBD server, with the frozen bitmap published as
`qemu:dirty-bitmap:NAME`, so the reader sees exactly what changed between the two checkpoints.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from procs import Holding

from .errors import ExportError
from .live import LiveExport, Quiesce
from .points import Checkpoint, DiskPoint

FLEECE_NODE = "cairn-fleece-{disk}"
FLEECE_JOB = "cairn-fleece-{disk}"
EXPORT_ID = "cairn-export-{disk}"

__all__ = ["ExportError", "FleeceExport"]


class FleeceExport(LiveExport):
    def __init__(self, scratch: Path, disks: list[str], checkpoint: str, since: dict[str, Checkpoint | None],
                 full: Collection[str] = (), quiesce: Quiesce | None = None):
        super().__init__(disks, checkpoint, since, full, quiesce)
        self.scratch = scratch
        # Socket paths must fit in 107 bytes, which a deep data directory may not: use /tmp.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cairn-nbd-"))
        self.socket = self._socket_dir / "nbd.sock"
        self._server = False
        # Killed, the backup leaves these to the sweep at the next start: the socket directory and
        # the scratch overlays (QEMU holds one open until the next backup removes its node, and
        # reads on from the removed file meanwhile).
        self._holding = Holding(f"fleecing export of {', '.join(disks)} into {scratch}")
        self._holding.remove(self._socket_dir)

    def _job(self, disk: str) -> str:
        return FLEECE_JOB.format(disk=disk)

    async def _prepare(self, point: DiskPoint) -> None:
        if not self.scratch.exists():
            self.scratch.mkdir(parents=True)
            self._holding.remove(self.scratch)
        image = self.scratch / f"{point.disk}.fleece.qcow2"
        await asyncio.to_thread(subprocess.run, ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(point.size)],
                                check=True, capture_output=True)
        await self._add_node({"driver": "qcow2", "node-name": FLEECE_NODE.format(disk=point.disk),
                              "backing": self._nodes[point.disk],
                              "file": {"driver": "file", "filename": str(image)}})

    def _copy_actions(self, disk: str) -> list[dict[str, Any]]:
        return [{"type": "blockdev-backup", "data": {"job-id": self._job(disk), "device": self._nodes[disk],
                                                     "target": FLEECE_NODE.format(disk=disk), "sync": "none"}}]

    async def _published(self, points: list[DiskPoint]) -> None:
        await self.qmp.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(self.socket)}}})
        self._server = True
        for point in points:
            d = point.disk
            point.uri = f"nbd+unix:///{d}?socket={self.socket}"
            args: dict[str, Any] = {"type": "nbd", "id": EXPORT_ID.format(disk=d),
                                    "node-name": FLEECE_NODE.format(disk=d), "name": d, "writable": False}
            if self.since[d]:
                args["bitmaps"] = [self.since[d]]
            await self.qmp.execute("block-export-add", args)

    async def _unpublish(self) -> None:
        if self._server:
            for d in self.disks:
                await self._quietly("block-export-del", {"id": EXPORT_ID.format(disk=d)})
            await self._wait_exports_gone()
            await self._quietly("nbd-server-stop")

    async def release(self) -> None:
        for d in self.disks:
            (self.scratch / f"{d}.fleece.qcow2").unlink(missing_ok=True)
        shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._holding.close()
