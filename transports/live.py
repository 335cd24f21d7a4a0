"""What every export of a running VM shares: one QMP transaction freezes all disks at one
instant, and the checkpoint bitmaps are kept right whatever happens next.

Per disk the transaction freezes the previous checkpoint bitmap (it says what changed up to
this instant), starts the next one, and starts the copy job a subclass asks for: a
`blockdev-backup sync=none` into a scratch overlay for pull (fleece.py), a `blockdev-backup`
into a target on the backup side for push (push.py). On success the previous bitmap is
dropped; on failure it is merged back with the new one, so the next incremental still covers
everything.

The QMP session is passed to each step and not kept: QEMU serves one QMP client at a time, and
nobody else should wait for the length of a backup.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

from vmm.spec import disk_of_qdev

from .errors import ExportError
from .points import (
    Checkpoint,
    DiskPoint,
    backing_files,
    bitmap_granularity,
    checkpoint_problem,
    plan_bitmap_repair,
)
from .qmp_protocol import QMP

# Holds the guest still around the freezing transaction: (QMP session) -> async context.
Quiesce = Callable[[QMP], AbstractAsyncContextManager[object]]
# Opens a short QMP session to the VM: `async with sessions() as qmp: ...`.
Sessions = Callable[[], AbstractAsyncContextManager[QMP]]

# Test hook (joined_to_the_freeze): more actions for the freezing transaction, given each disk's node.
FreezeCompanion = Callable[[dict[str, str]], list[dict[str, Any]]]
_freeze_companion: ContextVar[FreezeCompanion | None] = ContextVar("cairn_freeze_companion", default=None)

EXPORT_PREFIX = "cairn-export-"
# Nodes and jobs of exports are named "<prefix><disk>"; an interrupted backup's are removed.
NODE_PREFIXES = ("cairn-fleece-", "cairn-push-")


class LiveExport(ABC):
    """`since` names, per disk, the checkpoint the ledger knows (None: read in full); it is checked
    against QEMU before it is trusted. Disks in `full` are read in full whatever it says, and their
    checkpoint is dropped once the backup succeeds."""

    def __init__(self, disks: list[str], checkpoint: str, since: dict[str, Checkpoint | None],
                 full: Collection[str] = (), quiesce: Quiesce | None = None):
        self._qmp: QMP | None = None  # the session open() or close() was given
        self.disks = disks
        self.checkpoint = checkpoint
        self.expected = dict(since)
        self.since: dict[str, str | None] = {d: c.bitmap if c else None for d, c in since.items()}
        self.full = set(full)
        self.quiesce = quiesce
        self.notes: list[str] = []   # what open() had to repair, for the backup's record
        self._nodes: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._nodes_added: list[str] = []
        self._tracked: set[str] = set()   # disks that get the new checkpoint bitmap
        self._volatile: set[str] = set()  # ... kept by QEMU in memory only: their images cannot store one
        self._distrusted: dict[str, str] = {}   # disk -> a bitmap that failed the checks, dropped on success
        self._started = False

    # -- what a subclass provides -------------------------------------------------------------

    @abstractmethod
    def _job(self, disk: str) -> str:
        """The id of the disk's copy job."""

    @abstractmethod
    async def _prepare(self, point: DiskPoint) -> None:
        """Before the transaction: create the node the disk's job copies into."""

    @abstractmethod
    def _copy_actions(self, disk: str) -> list[dict[str, Any]]:
        """The transaction actions starting the disk's copy job."""

    @abstractmethod
    async def _published(self, points: list[DiskPoint]) -> None:
        """After the transaction: make the points readable (or start making them so)."""

    @abstractmethod
    async def _unpublish(self) -> None:
        """First step of close(): stop serving the points."""

    async def ready(self, sessions: Sessions) -> None:
        """Wait until the points can be read (at once, unless a subclass copies first)."""
        return

    async def release(self) -> None:
        """Last step of close(): release what this side holds for the export (files, helper
        processes, their record), however the teardown in QEMU went. Also run when QEMU cannot
        be reached to close the export at all (it was killed meanwhile); runs more than once
        without harm."""
        return

    # -- the shared part -----------------------------------------------------------------------

    @property
    def qmp(self) -> QMP:
        """The QMP session of the open() or close() under way."""
        if self._qmp is None:
            raise ExportError("the export has no QMP session: open() or close() it first")
        return self._qmp

    async def open(self, qmp: QMP) -> list[DiskPoint]:
        """Freeze the disks at one instant. The caller guarantees no other backup of this VM runs:
        whatever an earlier, interrupted one left behind is cleared first."""
        self._qmp = qmp
        roots = await self._root_nodes()
        missing = [d for d in self.disks if d not in roots]
        if missing:
            raise ExportError(f"the running VM has no disk {', '.join(missing)}")
        roots = await self._reclaim()
        self._nodes = {d: roots[d]["node"] for d in self.disks}
        self._sizes = {d: roots[d]["size"] for d in self.disks}
        points = {d: DiskPoint(d, roots[d]["size"], "", None, checkpoint_file=roots[d]["file"],
                               checkpoint_node=roots[d]["node"]) for d in self.disks}
        self._check_since(roots, points)
        if await self.qmp.execute("query-block-exports"):
            raise ExportError("another export is active on this VM (a backup or restore is running)")
        for d in self.disks:
            await self._prepare(points[d])
        async with self.quiesce(qmp) if self.quiesce else nullcontext():
            await self.qmp.execute("transaction", {"actions": self._freeze_actions()})
        self._started = True
        ordered = [points[d] for d in self.disks]
        await self._published(ordered)
        return ordered

    async def close(self, qmp: QMP, success: bool) -> None:
        """Tear the export down; keep the checkpoint bitmaps right for the next backup."""
        self._qmp = qmp
        try:
            await self._unpublish()
            if self._started:
                for d in self.disks:
                    job = self._job(d)
                    if await self._quietly("block-job-cancel", {"device": job, "force": True}):
                        await self.qmp.wait_job(job, timeout=60)
                    # A job that stays after it ends (auto-dismiss off) holds its target node.
                    await self._quietly("job-dismiss", {"id": job})
                await self._settle_bitmaps(success)
            for node in self._nodes_added:
                await self._quietly("blockdev-del", {"node-name": node})
        finally:
            await self.release()

    async def _reclaim(self) -> dict[str, dict[str, Any]]:
        """Remove an interrupted backup's exports, jobs and nodes; repair its bitmaps.
        Returns the disks' root nodes as they are afterwards."""
        self.notes += await reclaim_interrupted(self._session, {d: self.since.get(d) for d in self.disks})
        return await self._root_nodes()

    async def _root_nodes(self) -> dict[str, dict[str, Any]]:
        return await root_nodes(self._session)

    @property
    def _session(self) -> QMP:
        """The QMP session of the step running now: open() and close() are given one."""
        if self.qmp is None:
            raise ExportError("the export has no QMP session: open() or close() it first")
        return self.qmp

    def _check_since(self, roots: dict[str, dict[str, Any]], points: dict[str, DiskPoint]) -> None:
        for d in self.disks:
            wanted, known, driver = self.since.get(d), self.expected.get(d), roots[d]["driver"]
            if driver != "qcow2":
                # Only qcow2 stores bitmaps; on any other image (raw files, block devices) QEMU
                # keeps this one in memory, for as long as it runs.
                self._volatile.add(d)
            self._tracked.add(d)
            points[d].checkpoint = self.checkpoint
            if not wanted or known is None:
                self.since[d] = None
                continue
            bitmaps = {b["name"]: b for b in roots[d]["bitmaps"] if "name" in b}
            problem = None if d in self.full else checkpoint_problem(bitmaps, roots[d]["chain"], known,
                                                                     persistent=d not in self._volatile)
            if problem or d in self.full:
                self.since[d] = None
                if problem and d in self._volatile and wanted not in bitmaps:
                    points[d].fallback_reason = (f"{d}: {driver} image: its checkpoint bitmap {wanted} lived only in "
                                                 "the QEMU that ran the VM then (no bitmap can be stored in it), "
                                                 "and the VM has been restarted since; full read")
                elif problem:
                    points[d].fallback_reason = f"{d}: {problem}; full read"
                if wanted in bitmaps and not bitmaps[wanted].get("busy"):
                    self._distrusted[d] = wanted
            points[d].since = self.since[d]

    def _freeze_actions(self) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = []
        for d in self.disks:
            node = self._nodes[d]
            if self.since[d]:
                actions.append({"type": "block-dirty-bitmap-disable", "data": {"node": node, "name": self.since[d]}})
            if d in self._tracked:
                actions.append({"type": "block-dirty-bitmap-add",
                                "data": {"node": node, "name": self.checkpoint, "persistent": d not in self._volatile,
                                         "granularity": bitmap_granularity(self._sizes[d])}})
            actions += self._copy_actions(d)
        if (companion := _freeze_companion.get()) is not None:
            actions += companion(dict(self._nodes))
        return actions

    async def _settle_bitmaps(self, success: bool) -> None:
        for d in self.disks:
            node, old = self._nodes[d], self.since[d]
            if success:
                for name in filter(None, (old, self._distrusted.get(d))):
                    await self._session.execute("block-dirty-bitmap-remove", {"node": node, "name": name})
                continue
            if old:
                await self._session.execute("block-dirty-bitmap-merge",
                                       {"node": node, "target": old, "bitmaps": [self.checkpoint]})
                await self._session.execute("block-dirty-bitmap-enable", {"node": node, "name": old})
            if d in self._tracked:
                await self._quietly("block-dirty-bitmap-remove", {"node": node, "name": self.checkpoint})

    async def _add_node(self, options: dict[str, Any]) -> None:
        await self._session.execute("blockdev-add", options)
        self._nodes_added.append(options["node-name"])

    async def _wait_exports_gone(self, timeout: float = 30.0) -> None:
        await wait_exports_gone(self._session, timeout)

    async def _quietly(self, cmd: str, args: dict[str, Any] | None = None) -> bool:
        return await quietly(self._session, cmd, args)


async def reclaim_interrupted(qmp: QMP, bases: dict[str, str | None]) -> list[str]:
    """Remove what backups whose process died left in QEMU: their exports (and the NBD server),
    copy jobs and nodes; fold their checkpoint bitmaps back into each disk's base (`bases`:
    disk -> the ledger's bitmap, None: no usable base). Only while no backup of the VM runs:
    a backup does it before it freezes, a snapshot operation before it changes the chains.
    Returns what was done, for a record."""
    notes = []
    stale = [e["id"] for e in await qmp.execute("query-block-exports") if e["id"].startswith(EXPORT_PREFIX)]
    for export_id in stale:
        await quietly(qmp, "block-export-del", {"id": export_id, "mode": "hard"})
    if stale:
        await wait_exports_gone(qmp)
        await quietly(qmp, "nbd-server-stop")
        notes.append(f"removed exports of an interrupted backup: {', '.join(stale)}")
    for job in await qmp.execute("query-jobs"):
        if job["id"].startswith(NODE_PREFIXES):
            if job["status"] not in ("concluded", "null") and await quietly(
                    qmp, "block-job-cancel", {"device": job["id"], "force": True}):
                await qmp.wait_job(job["id"], timeout=60)
            await quietly(qmp, "job-dismiss", {"id": job["id"]})
    for node in await qmp.execute("query-named-block-nodes", {"flat": True}):
        if node["node-name"].startswith(NODE_PREFIXES):
            await quietly(qmp, "blockdev-del", {"node-name": node["node-name"]})
    roots = await root_nodes(qmp)   # a leftover copy-before-write filter hid the disk node
    for d, base in bases.items():
        node = roots[d]["node"]
        repair = plan_bitmap_repair({b["name"]: b for b in roots[d]["bitmaps"] if "name" in b}, base)
        if not repair.needed:
            continue
        if repair.merge:
            await qmp.execute("block-dirty-bitmap-merge", {"node": node, "target": base, "bitmaps": repair.merge})
        for name in repair.remove:
            await qmp.execute("block-dirty-bitmap-remove", {"node": node, "name": name})
        if repair.enable_base:
            await qmp.execute("block-dirty-bitmap-enable", {"node": node, "name": base})
        notes.append(repair.describe(d, base))
    return notes


async def root_nodes(qmp: QMP) -> dict[str, dict[str, Any]]:
    """disk name → its current root node, found through the device (`<disk>-dev`)."""
    roots: dict[str, dict[str, Any]] = {}
    for entry in await qmp.execute("query-block"):
        disk = disk_of_qdev(entry.get("qdev", ""))
        inserted = entry.get("inserted")
        if disk and inserted and not inserted["ro"]:
            roots[disk] = {"node": inserted["node-name"], "size": inserted["image"]["virtual-size"],
                           "driver": inserted["drv"], "bitmaps": inserted.get("dirty-bitmaps", []),
                           "file": inserted["file"], "chain": backing_files(inserted["image"])}
    return roots


async def wait_exports_gone(qmp: QMP, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await qmp.execute("query-block-exports"):
        if loop.time() > deadline:
            raise ExportError("NBD exports did not go away (a client is still connected)")
        await asyncio.sleep(0.05)


async def quietly(qmp: QMP, cmd: str, args: dict[str, Any] | None = None) -> bool:
    """Teardown step that may find its object already gone."""
    try:
        await qmp.execute(cmd, args)
        return True
    except Exception:
        return False


@asynccontextmanager
async def exported(export: LiveExport, sessions: Sessions) -> AsyncIterator[list[DiskPoint]]:
    """The export's points while the body reads them; closed afterwards, keeping the new
    checkpoint only if the body succeeded. Each step has its own short QMP session."""
    try:
        async with sessions() as qmp:
            try:
                points = await export.open(qmp)
            except BaseException:
                await export.close(qmp, success=False)
                raise
    except BaseException:
        await export.release()
        raise
    try:
        await export.ready(sessions)
        yield points
    except BaseException:
        await _close(export, sessions, success=False)
        raise
    await _close(export, sessions, success=True)


async def _close(export: LiveExport, sessions: Sessions, success: bool) -> None:
    try:
        async with sessions() as qmp:
            await export.close(qmp, success)
    except BaseException:
        await export.release()    # QEMU may be gone: close() never ran
        raise


@contextmanager
def joined_to_the_freeze(companion: FreezeCompanion) -> Iterator[None]:
    """Test hook, used by no part of Cairn: every freezing transaction run in this context (the
    asyncio tasks and threads it starts inherit it) also runs the actions `companion(nodes)`
    returns, given each disk's node. A test starts a copy of its own there, of the very instant
    the backup reads (tests/test_live_writes.py: a full `blockdev-backup` of each disk into a
    reference file, to compare the backup with byte for byte while the guest writes on)."""
    token = _freeze_companion.set(companion)
    try:
        yield
    finally:
        _freeze_companion.reset(token)
