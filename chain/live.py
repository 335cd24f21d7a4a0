"""Changing the chains of a running VM through QMP (one session per operation).

Snapshot of all disks at one instant (per disk the overlay is made and opened first, then ONE
transaction):
    blockdev-create {file, size 0}            + blockdev-add <id>-file
    blockdev-create {qcow2, backing-file}     + blockdev-add <id> (backing: null)
    transaction: blockdev-snapshot {node: root, overlay: <id>}                   (each disk)
                 block-dirty-bitmap-add   <id>.B (persistent, same granularity)  (each recording B)
                 block-dirty-bitmap-merge <id>.B += {root, B}
The snapshot actions come first: each keeps its disk drained to the end of the transaction, so
no write can land between the merge and the switch. The next backup finds B, complete, on the
active layer, where the export and the offline path look for it. The old layer keeps a frozen
copy of B: QEMU makes the bitmaps of a layer that lost its writer read-only, so it cannot be
removed there; it goes with the layer's file, and is only ever looked up below the active
layer's B, which contains it.

Commit (a child into its parent) and pull (a parent into a child) are block-commit and
block-stream jobs (see jobs.py). An active-layer commit carries the recording bitmaps down once
the job is READY: from then on the job mirrors each guest write into the base, and writes into
the base dirty its enabled bitmaps (lab P2), so the carried bitmap misses nothing up to and
after the pivot. Stream writes do not dirty bitmaps, and do not need to: the guest-visible data
does not change.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmm import QMPSession

from .errors import TreeError
from .graph import BlockGraph, BlockNode, read_graph
from .jobs import run_block_job, run_create_job


@dataclass(frozen=True)
class NewLayer:
    disk: str
    node_id: str        # the model's node id, also the QEMU node name
    file: str


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

    async def snapshot(self, layers: list[NewLayer]) -> None:
        graph = await self.graph()
        added: list[str] = []
        try:
            for layer in layers:
                added += await self._open_overlay(layer, graph.root(layer.disk))
            actions = [{"type": "blockdev-snapshot", "data": {"node": graph.roots[layer.disk], "overlay": layer.node_id}}
                       for layer in layers]
            for layer in layers:
                actions += carry_bitmap_actions(graph.root(layer.disk), layer.node_id, set())
            await self.qmp.execute("transaction", {"actions": actions})
        except BaseException:
            await self._delete_nodes(reversed(added))
            for layer in layers:
                Path(layer.file).unlink(missing_ok=True)
            raise

    async def commit(self, top_file: str, base_file: str, speed: int | None) -> None:
        """Commit `top_file` into its backing `base_file`, pivoting if it is the active layer."""
        graph = await self.graph()
        top, base = self._node(graph, top_file), self._node(graph, base_file)
        disk = graph.disk_of(top)
        args: dict[str, Any] = {"device": graph.roots[disk], "base-node": base.name}
        on_ready = None
        if top.name == graph.roots[disk]:
            async def on_ready() -> None:
                await self.qmp.execute("transaction", {"actions": carry_bitmap_actions(
                    top, base.name, {b["name"] for b in base.bitmaps}) + drop_stale_actions(top, base)})
        else:
            args["top-node"] = top.name
        await run_block_job(self.qmp, "block-commit", f"cairn-commit-{disk}", _with_speed(args, speed), on_ready)
        await self.forget_file(top_file)

    async def pull(self, bottom_file: str, top_file: str, speed: int | None) -> None:
        """Copy `bottom_file` (the backing of `top_file`) into `top_file`, which then skips it.
        The caller forgets `bottom_file` once no child needs it any more."""
        graph = await self.graph()
        top, bottom = self._node(graph, top_file), self._node(graph, bottom_file)
        await run_block_job(self.qmp, "block-stream", f"cairn-stream-{graph.disk_of(top)}",
                            _with_speed({"device": top.name, "bottom": bottom.name}, speed))

    async def forget_file(self, file: str) -> None:
        """Close a layer that left the chain, if QEMU keeps it open (see BlockNode.owned_names)."""
        graph = await self.graph()
        for node in [n for n in graph.nodes.values() if n.file == file]:
            await self._delete_nodes(node.owned_names())

    async def _open_overlay(self, layer: NewLayer, current: BlockNode) -> list[str]:
        """Create and open an empty qcow2 over `current`, not yet attached; returns node names."""
        opened = []
        protocol = f"{layer.node_id}-file"
        await run_create_job(self.qmp, f"cairn-create-{layer.node_id}",
                             {"driver": "file", "filename": layer.file, "size": 0})
        await self.qmp.execute("blockdev-add", {"driver": "file", "filename": layer.file, "node-name": protocol})
        opened.append(protocol)
        await run_create_job(self.qmp, f"cairn-create-{layer.node_id}",
                             {"driver": "qcow2", "file": protocol, "size": current.virtual_size,
                              "backing-file": current.file, "backing-fmt": current.driver})
        await self.qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": layer.node_id, "file": protocol,
                                                "backing": None})
        opened.append(layer.node_id)
        return opened

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
