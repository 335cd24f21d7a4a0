"""Pull-mode export of a VM that runs on another host, read here through SSH.

The same freezing transaction and checkpoint bookkeeping as a local fleecing export
(fleece.py, live.py), with the files where QEMU is: the scratch overlays are made on the host
by Cairn's agent, QEMU's NBD server listens on a unix socket there, and that socket is
forwarded here over SSH (tunnel.py), so the export crosses the network encrypted and
authenticated, and no port is opened on the host.
"""
from __future__ import annotations

import asyncio
import posixpath
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from .fleece import FLEECE_NODE, FleeceExport
from .live import Quiesce
from .points import Checkpoint, DiskPoint
from .tunnel import SocketForward


class RemoteFiles(Protocol):
    """File work on the VM's host (vmm.remote.RemoteHost is one)."""

    def create_disk(self, path: str, size: int) -> None: ...
    def remove(self, paths: list[str]) -> None: ...


class RemoteFleeceExport(FleeceExport):
    """`scratch` is a directory on the host (made and removed here); `ssh_args` reach the host
    with the OpenSSH client."""

    def __init__(self, files: RemoteFiles, ssh_args: list[str], scratch: str, disks: list[str], checkpoint: str,
                 since: dict[str, Checkpoint | None], full: Collection[str] = (), quiesce: Quiesce | None = None):
        # The local scratch FleeceExport keeps is never written: an empty directory of our own.
        self._local = Path(tempfile.mkdtemp(prefix="cairn-rfleece-"))
        super().__init__(self._local, disks, checkpoint, since, full, quiesce)
        self.files = files
        self.ssh_args = ssh_args
        self.remote_scratch = scratch
        self.socket = Path(posixpath.join(scratch, "nbd.sock"))
        self._forward: SocketForward | None = None
        self._made: list[str] = []

    def _image(self, disk: str) -> str:
        return posixpath.join(self.remote_scratch, f"{disk}.fleece.qcow2")

    async def _prepare(self, point: DiskPoint) -> None:
        image = self._image(point.disk)
        await asyncio.to_thread(self.files.create_disk, image, point.size)
        self._made.append(image)
        await self._add_node({"driver": "qcow2", "node-name": FLEECE_NODE.format(disk=point.disk),
                              "backing": self._nodes[point.disk], "file": {"driver": "file", "filename": image}})

    async def _published(self, points: list[DiskPoint]) -> None:
        await super()._published(points)
        self._forward = await asyncio.to_thread(SocketForward(self.ssh_args, str(self.socket), "nbd.sock").open)
        for point in points:
            point.uri = f"nbd+unix:///{point.disk}?socket={self._forward.local}"

    async def _unpublish(self) -> None:
        if self._forward is not None:
            await asyncio.to_thread(self._forward.close)
            self._forward = None
        await super()._unpublish()

    async def release(self) -> None:
        try:
            await super().release()
        finally:
            shutil.rmtree(self._local, ignore_errors=True)
            made, self._made = self._made, []
            await asyncio.to_thread(self.files.remove, [*made, str(self.socket), self.remote_scratch])
