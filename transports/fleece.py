"""Point-in-time NBD export of a running VM's disks (pull mode, "fleecing").

All disks are frozen at one instant by a single QMP transaction that, per disk,
starts a `blockdev-backup sync=none` into a scratch overlay (copy-before-write keeps
the old data there while the guest goes on writing), adds the new checkpoint bitmap
and freezes the previous one. The frozen bitmap is published on the export as
`qemu:dirty-bitmap:NAME`, so the reader sees exactly what changed between the two
checkpoints. On success the previous bitmap is dropped; on failure it is merged back
with the new one, so the next incremental still covers everything.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .points import DiskPoint, bitmap_problem, plan_bitmap_repair
from .qmp_protocol import QMP

FLEECE_NODE = "cairn-fleece-{disk}"
FLEECE_JOB = "cairn-fleece-{disk}"
EXPORT_ID = "cairn-export-{disk}"


class ExportError(Exception):
    """The VM cannot be exported as asked (unknown disk, export already active)."""


class FleeceExport:
    """The QMP session is passed to open() and close() and not kept: QEMU serves one QMP
    client at a time, and nobody else should wait for the length of a backup."""

    def __init__(self, scratch: Path, disks: list[str], checkpoint: str, since: dict[str, str | None]):
        self.qmp: QMP | None = None
        self.scratch = scratch
        self.disks = disks
        self.checkpoint = checkpoint
        self.since = dict(since)
        # Socket paths must fit in 107 bytes, which a deep data directory may not: use /tmp.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cairn-nbd-"))
        self.socket = self._socket_dir / "nbd.sock"
        self._nodes: dict[str, str] = {}
        self._fleece_added: list[str] = []
        self._tracked: set[str] = set()   # disks that get the new checkpoint bitmap
        self._started = False
        self._server = False
        self.notes: list[str] = []   # what open() had to repair, for the backup's record

    async def open(self, qmp: QMP) -> list[DiskPoint]:
        """Freeze and export the disks. The caller guarantees no other backup of this VM runs:
        whatever an earlier, interrupted one left behind is cleared first."""
        self.qmp = qmp
        roots = await self._root_nodes()
        missing = [d for d in self.disks if d not in roots]
        if missing:
            raise ExportError(f"the running VM has no disk {', '.join(missing)}")
        roots = await self._reclaim()
        self._nodes = {d: roots[d]["node"] for d in self.disks}
        points = {d: DiskPoint(d, roots[d]["size"], f"nbd+unix:///{d}?socket={self.socket}", None)
                  for d in self.disks}
        await self._check_since(roots, points)
        if await self.qmp.execute("query-block-exports"):
            raise ExportError("another export is active on this VM (a backup or restore is running)")

        self.scratch.mkdir(parents=True, exist_ok=True)
        for d in self.disks:
            await self._add_fleece_node(d, points[d].size)
        await self.qmp.execute("transaction", {"actions": self._freeze_actions()})
        self._started = True
        await self.qmp.execute("nbd-server-start",
                               {"addr": {"type": "unix", "data": {"path": str(self.socket)}}})
        self._server = True
        for d in self.disks:
            args: dict[str, Any] = {"type": "nbd", "id": EXPORT_ID.format(disk=d),
                                    "node-name": FLEECE_NODE.format(disk=d), "name": d, "writable": False}
            if self.since[d]:
                args["bitmaps"] = [self.since[d]]
            await self.qmp.execute("block-export-add", args)
        return [points[d] for d in self.disks]

    async def close(self, qmp: QMP, success: bool) -> None:
        """Tear the export down; keep the checkpoint bitmaps right for the next backup."""
        self.qmp = qmp
        if self._server:
            for d in self.disks:
                await self._quietly("block-export-del", {"id": EXPORT_ID.format(disk=d)})
            await self._wait_exports_gone()
            await self._quietly("nbd-server-stop")
        if self._started:
            for d in self.disks:
                job = FLEECE_JOB.format(disk=d)
                if await self._quietly("block-job-cancel", {"device": job, "force": True}):
                    await self.qmp.wait_job(job, timeout=60)
            await self._settle_bitmaps(success)
        for node in self._fleece_added:
            await self._quietly("blockdev-del", {"node-name": node})
        for d in self.disks:
            (self.scratch / f"{d}.fleece.qcow2").unlink(missing_ok=True)
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def _reclaim(self) -> dict[str, dict[str, Any]]:
        """Remove an interrupted backup's exports, jobs and nodes; repair its bitmaps.
        Returns the disks' root nodes as they are afterwards."""
        stale = [e["id"] for e in await self.qmp.execute("query-block-exports") if e["id"].startswith("cairn-export-")]
        for export_id in stale:
            await self._quietly("block-export-del", {"id": export_id, "mode": "hard"})
        if stale:
            await self._wait_exports_gone()
            await self._quietly("nbd-server-stop")
            self.notes.append(f"removed exports of an interrupted backup: {', '.join(stale)}")
        for job in await self.qmp.execute("query-jobs"):
            if job["id"].startswith("cairn-fleece-") and await self._quietly(
                    "block-job-cancel", {"device": job["id"], "force": True}):
                await self.qmp.wait_job(job["id"], timeout=60)
        for node in await self.qmp.execute("query-named-block-nodes", {"flat": True}):
            if node["node-name"].startswith("cairn-fleece-"):
                await self._quietly("blockdev-del", {"node-name": node["node-name"]})
        roots = await self._root_nodes()   # a leftover copy-before-write filter hid the disk node
        for d in self.disks:
            node, base = roots[d]["node"], self.since.get(d)
            repair = plan_bitmap_repair({b["name"]: b for b in roots[d]["bitmaps"] if "name" in b}, base)
            if not repair.needed:
                continue
            if repair.merge:
                await self.qmp.execute("block-dirty-bitmap-merge", {"node": node, "target": base, "bitmaps": repair.merge})
            for name in repair.remove:
                await self.qmp.execute("block-dirty-bitmap-remove", {"node": node, "name": name})
            if repair.enable_base:
                await self.qmp.execute("block-dirty-bitmap-enable", {"node": node, "name": base})
            self.notes.append(repair.describe(d, base))
        return await self._root_nodes()

    async def _root_nodes(self) -> dict[str, dict[str, Any]]:
        """disk name → its current root node, found through the device (`<disk>-dev`)."""
        roots: dict[str, dict[str, Any]] = {}
        for entry in await self.qmp.execute("query-block"):
            qdev = entry.get("qdev", "")
            inserted = entry.get("inserted")
            if not inserted or not qdev.startswith("/machine/peripheral/"):
                continue
            device = qdev.split("/")[3]
            if device.endswith("-dev"):
                roots[device[:-4]] = {"node": inserted["node-name"], "size": inserted["image"]["virtual-size"],
                                      "driver": inserted["drv"], "bitmaps": inserted.get("dirty-bitmaps", [])}
        return roots

    async def _check_since(self, roots: dict[str, dict[str, Any]], points: dict[str, DiskPoint]) -> None:
        for d in self.disks:
            wanted = self.since.get(d)
            if roots[d]["driver"] != "qcow2":
                self.since[d] = None
                points[d].fallback_reason = f"{d} is {roots[d]['driver']}: no persistent dirty bitmap, full read"
                continue
            self._tracked.add(d)
            points[d].checkpoint = self.checkpoint
            if not wanted:
                self.since[d] = None
                continue
            bitmaps = {b["name"]: b for b in roots[d]["bitmaps"] if "name" in b}
            problem = bitmap_problem(bitmaps, wanted)
            if problem:
                self.since[d] = None
                points[d].fallback_reason = f"{d}: {problem}; full read"
            points[d].since = self.since[d]

    async def _add_fleece_node(self, disk: str, size: int) -> None:
        image = self.scratch / f"{disk}.fleece.qcow2"
        await asyncio.to_thread(subprocess.run, ["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(size)],
                                check=True, capture_output=True)
        node = FLEECE_NODE.format(disk=disk)
        await self.qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": node, "backing": self._nodes[disk],
                                                "file": {"driver": "file", "filename": str(image)}})
        self._fleece_added.append(node)

    def _freeze_actions(self) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = []
        for d in self.disks:
            node = self._nodes[d]
            if self.since[d]:
                actions.append({"type": "block-dirty-bitmap-disable", "data": {"node": node, "name": self.since[d]}})
            if d in self._tracked:
                actions.append({"type": "block-dirty-bitmap-add",
                                "data": {"node": node, "name": self.checkpoint, "persistent": True}})
            actions.append({"type": "blockdev-backup",
                            "data": {"job-id": FLEECE_JOB.format(disk=d), "device": node,
                                     "target": FLEECE_NODE.format(disk=d), "sync": "none"}})
        return actions

    async def _settle_bitmaps(self, success: bool) -> None:
        for d in self.disks:
            node, old = self._nodes[d], self.since[d]
            if success:
                if old:
                    await self.qmp.execute("block-dirty-bitmap-remove", {"node": node, "name": old})
                continue
            if old:
                await self.qmp.execute("block-dirty-bitmap-merge",
                                       {"node": node, "target": old, "bitmaps": [self.checkpoint]})
                await self.qmp.execute("block-dirty-bitmap-enable", {"node": node, "name": old})
            if d in self._tracked:
                await self._quietly("block-dirty-bitmap-remove", {"node": node, "name": self.checkpoint})

    async def _wait_exports_gone(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.qmp.execute("query-block-exports"):
            if loop.time() > deadline:
                raise ExportError("NBD exports did not go away (a client is still connected)")
            await asyncio.sleep(0.05)

    async def _quietly(self, cmd: str, args: dict[str, Any] | None = None) -> bool:
        """Teardown step that may find its object already gone."""
        try:
            await self.qmp.execute(cmd, args)
            return True
        except Exception:  # noqa: BLE001 - cleanup must reach every step
            return False
