"""Changing the chains of a running VM through QMP (one session per operation).

Snapshot of all disks at one instant (per disk the overlay is made and opened first, then ONE
transaction):
    blockdev-create {file, size 0}            + blockdev-add <id>-file
    blockdev-create {qcow2, backing-file}     + blockdev-add <id> (backing: null)
    transaction: blockdev-snapshot {node: root, overlay: <id>}                   (each disk)
                 block-dirty-bitmap-add   <id>.B (persistent, same granularity)  (each recording B)
                 block-dirty-bitmap-merge <id>.B += {root, B}
The snapshot actions come first: each keeps its disk drained to the end of the transaction, so
no write can land between the merge and the switch. Opening and switching are separate steps
(`open_overlays`, `switch`): the catalog records the overlays between them (see intent.py). The next backup finds B, complete, on the
active layer, where the export and the offline path look for it. The old layer keeps a frozen
copy of B: QEMU makes the bitmaps of a layer that lost its writer read-only, so it cannot be
removed there; it goes with the layer's file, and is only ever looked up below the active
layer's B, which contains it.

A memory state is saved in the same pause as the switch: `migrate` to `exec:cat > <file>`
(QEMU 7.2 has no file: URI), then `cont`, which takes back the images a completed migration
hands over. A revert loads it with `-incoming exec:cat <file>`.

Commit (a child into its parent) and pull (a parent into a child) are block-commit and
block-stream jobs (see jobs.py). An active-layer commit carries the recording bitmaps down once
the job is READY: from then on the job mirrors each guest write into the base, and writes into
the base dirty its enabled bitmaps (lab P2), so the carried bitmap misses nothing up to and
after the pivot. The guest is paused from READY until the caller has recorded the pivot: a
pivot leaves the top layer stale, and a crash in between must not lose a write that reached
only the base. Stream writes do not dirty bitmaps, and do not need to: the guest-visible data
does not change.
"""
from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from vmm import QMPSession

from .errors import ChainError, TreeError
from .graph import BlockGraph, BlockNode, read_graph
from .intent import NewLayer
from .jobs import cancel_job, run_block_job, run_create_job

# Block jobs chain/ starts are named so; one still there belongs to an operation that died.
JOB_PREFIXES = ("cairn-commit-", "cairn-stream-", "cairn-create-")
# The guest is paused while its memory is saved: as fast as the disk takes it.
MEMORY_SAVE_BANDWIDTH = 1 << 40
MEMORY_SAVE_TIMEOUT = 600.0
MIGRATION_ENDS = ("completed", "failed", "cancelled")


class LiveChains:
    def __init__(self, qmp: QMPSession):
        self.qmp = qmp

    async def graph(self) -> BlockGraph:
        return await read_graph(self.qmp)

    async def open_files(self) -> set[str]:
        """The files of every disk's chain: those must be changed through QEMU."""
        graph = await self.graph()
        return {n.file for disk in graph.roots for n in graph.chain(disk)}

    async def require_idle(self) -> None:
        """A backup's export or another job holds the chain: changing it now would break them."""
        if await self.qmp.execute("query-block-exports"):
            raise TreeError("the VM's disks are being exported (a backup or restore is running); try again later")
        if jobs := await self.qmp.execute("query-jobs"):
            raise TreeError(f"block jobs are running on the VM ({', '.join(j['id'] for j in jobs)}); try again later")

    async def cancel_leftover_jobs(self) -> list[str]:
        """Cancel and dismiss the jobs an interrupted operation left behind; returns their ids.
        A cancelled commit or stream leaves the graph as it was (the data it copied is the
        same as what it was copied over, as far as the guest can see)."""
        ids = [j["id"] for j in await self.qmp.execute("query-jobs") if j["id"].startswith(JOB_PREFIXES)]
        for job_id in ids:
            await cancel_job(self.qmp, job_id)
        return ids

    async def open_overlays(self, layers: list[NewLayer]) -> None:
        """Create and open an empty qcow2 over each disk's root, not yet attached."""
        graph = await self.graph()
        try:
            for layer in layers:
                await self._open_overlay(layer, graph.root(layer.disk))
        except BaseException:
            await self.close_overlays(layers)
            raise

    async def close_overlays(self, layers: list[NewLayer]) -> None:
        """Undo open_overlays, whatever part of it was done."""
        present = {e["node-name"] for e in await self.qmp.execute("query-named-block-nodes")}
        await self._delete_nodes(n for layer in layers for n in (layer.node_id, f"{layer.node_id}-file")
                                 if n in present)
        for layer in layers:
            Path(layer.file).unlink(missing_ok=True)

    async def switch(self, layers: list[NewLayer]) -> None:
        """Make the opened overlays the disks' active layers, all at one instant."""
        graph = await self.graph()
        actions = [{"type": "blockdev-snapshot", "data": {"node": graph.roots[layer.disk], "overlay": layer.node_id}}
                   for layer in layers]
        for layer in layers:
            actions += carry_bitmap_actions(graph.root(layer.disk), layer.node_id, set())
        await self.qmp.execute("transaction", {"actions": actions})

    async def save_memory(self, file: str) -> None:
        """Save the guest's RAM and device state to `file` by migrating into it. The guest must
        be paused, and the caller resumes it: a completed migration leaves QEMU in
        `postmigrate` with its images handed over, and `cont` takes them back. The state is
        written under a temporary name, so `file` exists only complete."""
        partial = f"{file}.part"
        await self.qmp.execute("migrate-set-parameters", {"max-bandwidth": MEMORY_SAVE_BANDWIDTH})
        await self.qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(partial)}"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MEMORY_SAVE_TIMEOUT
        while (status := await self.qmp.execute("query-migrate")).get("status") not in MIGRATION_ENDS:
            if loop.time() > deadline:
                await self.qmp.execute("migrate_cancel")
                raise ChainError(f"saving the memory state took more than {MEMORY_SAVE_TIMEOUT:g}s")
            await asyncio.sleep(0.05)
        if status["status"] != "completed":
            Path(partial).unlink(missing_ok=True)
            raise ChainError(f"saving the memory state failed: {status.get('error-desc', status['status'])}")
        os.replace(partial, file)

    async def running(self) -> bool:
        return bool((await self.qmp.execute("query-status"))["running"])

    async def pause(self) -> bool:
        """Pause the guest if it runs; returns whether it did (then resume() it)."""
        if not await self.running():
            return False
        await self.qmp.execute("stop")
        return True

    async def resume(self) -> None:
        await self.qmp.execute("cont")

    async def commit(self, top_file: str, base_file: str, speed: int | None,
                     on_pivot: Callable[[], Awaitable[None]]) -> None:
        """Commit `top_file` into its backing `base_file`, pivoting if it is the active layer.
        `on_pivot` runs once the graph has changed, before the guest resumes (see above)."""
        graph = await self.graph()
        top, base = self._node(graph, top_file), self._node(graph, base_file)
        disk = graph.disk_of(top)
        args: dict[str, Any] = {"device": graph.roots[disk], "base-node": base.name}
        paused = False
        on_ready = None
        if top.name == graph.roots[disk]:
            async def on_ready() -> None:
                nonlocal paused
                paused = await self.pause()
                await self.qmp.execute("transaction", {"actions": carry_bitmap_actions(
                    top, base.name, {b["name"] for b in base.bitmaps}) + drop_stale_actions(top, base)})
        else:
            args["top-node"] = top.name
        try:
            await run_block_job(self.qmp, "block-commit", f"cairn-commit-{disk}", _with_speed(args, speed), on_ready)
            await self._flush(disk)
            await on_pivot()
        finally:
            if paused:
                await self.resume()
        await self.forget_file(top_file)

    async def pull(self, bottom_file: str, top_file: str, speed: int | None) -> None:
        """Copy `bottom_file` (the backing of `top_file`) into `top_file`, which then skips it.
        The caller forgets `bottom_file` once no child needs it any more."""
        graph = await self.graph()
        top, bottom = self._node(graph, top_file), self._node(graph, bottom_file)
        disk = graph.disk_of(top)
        await run_block_job(self.qmp, "block-stream", f"cairn-stream-{disk}",
                            _with_speed({"device": top.name, "bottom": bottom.name}, speed))
        await self._flush(disk)

    async def forget_file(self, file: str) -> None:
        """Close a layer that left the chain, if QEMU keeps it open (see BlockNode.owned_names)."""
        graph = await self.graph()
        for node in [n for n in graph.nodes.values() if n.file == file]:
            await self._delete_nodes(node.owned_names())

    async def resume_if_paused_by_us(self, paused_by_owner: bool) -> bool:
        """Resume a guest that an interrupted commit paused for its pivot (not one its owner
        paused); returns whether it did."""
        if paused_by_owner or await self.running():
            return False
        await self.qmp.execute("cont")
        return True

    async def _flush(self, disk: str) -> None:
        """Write the disk's chain to its files, metadata included: a job's copy may otherwise
        sit in QEMU's qcow2 caches when the tree records it, and a QEMU crash would lose it
        with the layer it came from already deleted. QMP has no flush command; HMP qemu-io
        flushes a node and everything under it."""
        await self.qmp.qemu_io((await self.graph()).roots[disk], "flush")

    async def _open_overlay(self, layer: NewLayer, current: BlockNode) -> None:
        protocol = f"{layer.node_id}-file"
        await run_create_job(self.qmp, f"cairn-create-{layer.node_id}",
                             {"driver": "file", "filename": layer.file, "size": 0})
        await self.qmp.execute("blockdev-add", {"driver": "file", "filename": layer.file, "node-name": protocol})
        await run_create_job(self.qmp, f"cairn-create-{layer.node_id}",
                             {"driver": "qcow2", "file": protocol, "size": current.virtual_size,
                              "backing-file": current.file, "backing-fmt": current.driver})
        await self.qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": layer.node_id, "file": protocol,
                                                "backing": None})

    async def _delete_nodes(self, names: Iterable[str]) -> None:
        for name in names:
            await self.qmp.execute("blockdev-del", {"node-name": name})

    @staticmethod
    def _node(graph: BlockGraph, file: str) -> BlockNode:
        node = graph.by_file(file)
        if node is None:
            raise TreeError(f"the running VM does not have {file} open in a disk's chain")
        return node


def carry_bitmap_actions(source: BlockNode, target: str, target_has: set[str]) -> list[dict[str, Any]]:
    """Transaction actions giving node `target` each recording bitmap of `source`. A bitmap of
    the same name already on `target` is the frozen copy from when `source` was snapshotted on
    it: `source`'s contains it, but a commit into `target` has dirtied it with every cluster it
    copied, so it is cleared first."""
    actions: list[dict[str, Any]] = []
    for bitmap in source.recording_bitmaps():
        name = bitmap["name"]
        if name in target_has:
            actions.append({"type": "block-dirty-bitmap-clear", "data": {"node": target, "name": name}})
        else:
            actions.append({"type": "block-dirty-bitmap-add",
                            "data": {"node": target, "name": name, "persistent": True,
                                     "granularity": bitmap["granularity"]}})
        actions.append({"type": "block-dirty-bitmap-merge",
                        "data": {"node": target, "target": name, "bitmaps": [{"node": source.name, "name": name}]}})
    return actions


def drop_stale_actions(top: BlockNode, base: BlockNode) -> list[dict[str, Any]]:
    """Transaction actions removing the enabled bitmaps of `base` that `top` does not carry
    down: frozen copies from snapshots, which missed every write to the layers above. Once
    `base` is the active layer again they would claim to have recorded those."""
    carried = {b["name"] for b in top.recording_bitmaps()}
    return [{"type": "block-dirty-bitmap-remove", "data": {"node": base.name, "name": b["name"]}}
            for b in base.bitmaps if b.get("recording") and b["name"] not in carried]


def _with_speed(args: dict[str, Any], speed: int | None) -> dict[str, Any]:
    return {**args, "speed": speed} if speed else args
