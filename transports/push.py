"""Push mode: QEMU copies each disk into a target on the backup side, which is then ingested.

In the freezing transaction (live.py) each disk starts a `blockdev-backup` into its target:
`sync=full`, or `sync=bitmap` from the frozen checkpoint. The job itself holds the instant
(copy-before-write), so the guest goes on meanwhile. For an incremental the frozen bitmap is
first merged into a scratch bitmap that the job uses (the checkpoint itself stays free for the
bookkeeping in live.py): QEMU copies every granule it marks (points.bitmap_granularity), in
whole clusters of its backup job (64 KiB), so a push incremental reads at that granularity.

Targets are fresh qcow2 files with a `tracking` bitmap that records what QEMU wrote. Once the
copy is done they are served read-only by qemu-nbd with that bitmap frozen, so the reader sees
the same shape of export as in pull mode: the disk's content, and which granules changed.
Where the target lives and how QEMU reaches it is the `PushTarget`'s business: over NBD
(`NbdPushTarget` here) or as a file on an sshfs mount (sshfs.py).
"""
from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Collection
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from procs import Holding

from .errors import ExportError
from .live import LiveExport, Quiesce, Sessions
from .points import Checkpoint, DiskPoint, bitmap_granularity
from .qemu_nbd import QemuNbd, qemu_img
from .qmp_protocol import QMP

PUSH_NODE = "cairn-push-{disk}"
PUSH_JOB = "cairn-push-{disk}"
COPY_BITMAP = "cairn-push-{disk}"   # non-persistent; an orphan is folded back by the next backup
TRACKING_BITMAP = "tracking"
POLL_INTERVAL = 0.2


class PushTarget(Protocol):
    def create(self, disk: str, size: int) -> dict[str, Any]:
        """Make the disk's target image (with the tracking bitmap); return the blockdev-add
        options (without node-name) by which QEMU opens it."""
        ...

    def released(self, disk: str) -> Path:
        """QEMU has closed the target: make it complete on the backup side; return its path there."""
        ...

    def close(self) -> None:
        """Stop serving and remove the targets."""
        ...


def new_target_image(path: Path, size: int) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(path), str(size))
    qemu_img("bitmap", "--add", "-g", str(bitmap_granularity(size)), str(path), TRACKING_BITMAP)


class NbdPushTarget:
    """Targets in a directory of the backup side, each served writable by qemu-nbd."""

    def __init__(self, directory: Path):
        self.directory = directory
        # Socket paths must fit in 107 bytes, which a deep data directory may not: use /tmp.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cairn-push-"))
        self._holding = Holding(f"push backup targets in {directory}")
        self._holding.remove(self._socket_dir)
        self._writers: dict[str, QemuNbd] = {}

    def create(self, disk: str, size: int) -> dict[str, Any]:
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self._holding.remove(self.directory)
        image = self.directory / f"{disk}.push.qcow2"
        new_target_image(image, size)
        self._holding.remove(image)
        socket = self._socket_dir / f"{disk}.sock"
        self._writers[disk] = QemuNbd(image, "qcow2", disk, socket, holding=self._holding, writable=True)
        return {"driver": "nbd", "server": {"type": "unix", "path": str(socket)}, "export": disk}

    def released(self, disk: str) -> Path:
        self._writers.pop(disk).stop()   # qemu-nbd stores the tracking bitmap as it closes the image
        return self.directory / f"{disk}.push.qcow2"

    def close(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        with ExitStack() as cleanup:   # every step runs, whichever fails
            cleanup.callback(self._holding.close)
            cleanup.callback(shutil.rmtree, self._socket_dir, ignore_errors=True)
            for image in self.directory.glob("*.push.qcow2"):
                cleanup.callback(image.unlink)
            for writer in writers:
                cleanup.callback(writer.stop)


class PushExport(LiveExport):
    def __init__(self, target: PushTarget, disks: list[str], checkpoint: str,
                 since: dict[str, Checkpoint | None], full: Collection[str] = (), quiesce: Quiesce | None = None):
        super().__init__(disks, checkpoint, since, full, quiesce)
        self.target = target
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cairn-nbd-"))
        self._holding = Holding(f"readers of the pushed copies of {', '.join(disks)}")
        self._holding.remove(self._socket_dir)
        self._readers: list[QemuNbd] = []
        self._points: list[DiskPoint] = []

    def _job(self, disk: str) -> str:
        return PUSH_JOB.format(disk=disk)

    async def _prepare(self, point: DiskPoint) -> None:
        d = point.disk
        options = await asyncio.to_thread(self.target.create, d, point.size)
        await self._add_node({**options, "node-name": PUSH_NODE.format(disk=d)})
        if self.since[d]:
            await self.qmp.execute("block-dirty-bitmap-add", {
                "node": self._nodes[d], "name": COPY_BITMAP.format(disk=d),
                "granularity": bitmap_granularity(point.size),
                "persistent": False, "disabled": True})

    def _copy_actions(self, disk: str) -> list[dict[str, Any]]:
        # auto-dismiss off: a failed job stays in query-jobs with its error until dismissed.
        data: dict[str, Any] = {"job-id": self._job(disk), "device": self._nodes[disk],
                                "target": PUSH_NODE.format(disk=disk), "sync": "full", "auto-dismiss": False}
        if not self.since[disk]:
            return [{"type": "blockdev-backup", "data": data}]
        chunks = COPY_BITMAP.format(disk=disk)
        return [{"type": "block-dirty-bitmap-merge",
                 "data": {"node": self._nodes[disk], "target": chunks, "bitmaps": [self.since[disk]]}},
                {"type": "blockdev-backup",
                 "data": {**data, "sync": "bitmap", "bitmap": chunks, "bitmap-mode": "never"}}]

    async def _published(self, points: list[DiskPoint]) -> None:
        self._points = points

    async def ready(self, sessions: Sessions) -> None:
        """Wait for the copy jobs, let QEMU close the targets, then serve them for reading."""
        while not await self._copied(sessions):
            await asyncio.sleep(POLL_INTERVAL)
        for point in self._points:
            d = point.disk
            image = await asyncio.to_thread(self.target.released, d)
            bitmap = TRACKING_BITMAP if self.since[d] else None
            if bitmap:
                await asyncio.to_thread(qemu_img, "bitmap", "--disable", str(image), bitmap)
            socket = self._socket_dir / f"{d}.sock"
            self._readers.append(await asyncio.to_thread(QemuNbd, image, "qcow2", d, socket, holding=self._holding,
                                                         bitmap=bitmap))
            point.uri, point.since = f"nbd+unix:///{d}?socket={socket}", bitmap

    async def _copied(self, sessions: Sessions) -> bool:
        async with sessions() as qmp:
            mine = [self._job(d) for d in self.disks]
            jobs = {j["id"]: j for j in await qmp.execute("query-jobs") if j["id"] in mine}
            if len(jobs) < len(mine):
                raise ExportError(f"push jobs vanished from QEMU: {', '.join(sorted(set(mine) - set(jobs)))}")
            failed = [f"{j['id']}: {j['error']}" for j in jobs.values() if j.get("error")]
            if failed:
                raise ExportError(f"pushing the backup failed: {'; '.join(failed)}")
            if any(j["status"] != "concluded" for j in jobs.values()):
                return False
            for job in jobs:
                await qmp.execute("job-dismiss", {"id": job})
            for d in self.disks:
                await qmp.execute("blockdev-del", {"node-name": PUSH_NODE.format(disk=d)})
                self._nodes_added.remove(PUSH_NODE.format(disk=d))
                if self.since[d]:
                    await qmp.execute("block-dirty-bitmap-remove",
                                      {"node": self._nodes[d], "name": COPY_BITMAP.format(disk=d)})
            return True

    async def _unpublish(self) -> None:
        readers, self._readers = self._readers, []

        def stop_all() -> None:
            with ExitStack() as cleanup:   # every reader is stopped, whichever fails
                for reader in readers:
                    cleanup.callback(reader.stop)
        await asyncio.to_thread(stop_all)

    async def close(self, qmp: QMP, success: bool) -> None:
        await super().close(qmp, success)
        for d in self.disks:
            if self.since[d]:
                await self._quietly("block-dirty-bitmap-remove",
                                    {"node": self._nodes[d], "name": COPY_BITMAP.format(disk=d)})

    async def release(self) -> None:
        try:
            await self._unpublish()
        finally:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._holding.close()
            await asyncio.to_thread(self.target.close)
