"""Snapshot operations on a VM's tree: each changes the image files (through QMP for layers a
running VM has open, with qemu-img otherwise) and records the change in the model.

Each is announced by an intent and recorded step by step through a Journal, in the order
intent.py describes, so that an interruption at any point leaves the files the catalog names
holding the VM's latest data, and recover.py can finish or roll back what was begun. The merge
steps of a delete look at what is really there first, so running one again on a half-done
state does the rest of the work and nothing twice.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from vmm import QMPCommandError, create_disk

from . import offline
from .errors import ChainError, TreeError
from .inspect import measure
from .intent import Intent, Journal, NewLayer
from .live import LiveChains
from .tree import Merge, Snapshot, Via, VMTree, new_id


def new_layers(tree: VMTree) -> list[NewLayer]:
    """One new active layer per disk, next to the disk's current one: <dir>/<disk>.<node>.qcow2."""
    layers = []
    for disk in tree.disks():
        node_id = new_id()
        folder = os.path.dirname(tree.active(disk).file)
        layers.append(NewLayer(disk, node_id, os.path.join(folder, f"{disk}.{node_id}.qcow2")))
    return layers


async def take_snapshot(tree: VMTree, live: LiveChains | None, journal: Journal, snapshot_id: str, name: str,
                        automatic: bool, now: datetime, memory: bool = False) -> Snapshot:
    """`memory`: also save the guest's RAM and device state, in the same pause as the disks
    switch (a running VM only), so a revert can resume the guest where it was."""
    if memory and (live is None or not await live.running()):
        raise TreeError("a memory state can only be saved from a running VM (resume a paused one first)")
    layers = new_layers(tree)
    memory_file = os.path.join(os.path.dirname(layers[0].file), f"{snapshot_id}.vmstate") if memory else None
    intent = Intent("create", snapshot_id, layers=layers)
    journal.record(tree, intent)
    try:
        if live is not None:
            await live.open_overlays(layers)
        else:
            await asyncio.to_thread(_create_overlays, tree, layers)
    except BaseException:
        journal.record(tree, None)          # nothing changed: the half-made overlays are gone
        raise
    before = tree.to_dict()
    snap = tree.take_snapshot(snapshot_id, name, automatic, now, {layer.disk: (layer.node_id, layer.file) for layer in layers},
                              memory_file)
    intent.phase = "recorded"
    intent.obsolete = [f"{memory_file}.part"] if memory_file else []
    journal.record(tree, intent)
    if live is not None:
        paused = memory_file is not None and await live.pause()
        try:
            try:
                await live.switch(layers)
            except QMPCommandError:
                # QEMU refused the transaction, so no disk switched: back to the tree from before.
                await live.close_overlays(layers)
                _restore(tree, before)
                journal.record(tree, None)
                raise
            if memory_file is not None:
                await _save_memory(live, journal, tree, snap, memory_file, intent)
        finally:
            if paused:
                await live.resume()
    finish_recorded(tree, journal, intent)
    return snap


async def _save_memory(live: LiveChains, journal: Journal, tree: VMTree, snap: Snapshot, memory_file: str,
                       intent: Intent) -> None:
    try:
        await live.save_memory(memory_file)
    except (ChainError, QMPCommandError) as err:
        snap.memory = None
        finish_recorded(tree, journal, intent)
        raise ChainError(f"snapshot {snap.name}: the disks were taken, the memory state was not: {err}") from err


async def revert(tree: VMTree, journal: Journal, snap: Snapshot, now: datetime) -> None:
    """Only for a stopped VM: the running guest's memory would not match the reverted disks."""
    tree.check_revert(snap)
    layers = new_layers(tree)
    intent = Intent("revert", snap.id, layers=layers)
    journal.record(tree, intent)
    try:
        for layer in layers:
            await asyncio.to_thread(create_disk, layer.file, None, backing=tree.nodes[snap.nodes[layer.disk]].file)
        intent.obsolete = tree.revert(snap, now, {layer.disk: (layer.node_id, layer.file) for layer in layers})
    except BaseException:
        remove_files([layer.file for layer in layers])
        journal.record(tree, None)
        raise
    intent.phase = "recorded"
    journal.record(tree, intent)
    finish_recorded(tree, journal, intent)


def finish_recorded(tree: VMTree, journal: Journal, intent: Intent) -> None:
    """Remove the files the recorded tree no longer has, and close the intent."""
    in_use = {n.file for n in tree.nodes.values()}
    remove_files([f for f in intent.obsolete if f not in in_use])
    journal.record(tree, None)


async def delete_snapshot(tree: VMTree, live: LiveChains | None, journal: Journal, snap: Snapshot, via: Via | None,
                          rate_limit: int | None, approve: Callable[[list[Merge]], None] | None = None) -> list[Merge]:
    """`approve` sees the plan before anything is written, and may refuse it by raising."""
    nodes = [tree.nodes[n] for n in snap.nodes.values()]
    # plan_delete weighs the data each way would move: measure what it looks at.
    await asyncio.to_thread(measure, nodes + [c for n in nodes for c in tree.children(n)])
    merges = tree.plan_delete(snap, via)
    if approve is not None:
        approve(merges)
    intent = Intent("delete", snap.id, merges={m.disk: m.kind for m in merges}, rate_limit=rate_limit,
                    obsolete=[snap.memory] if snap.memory else [])
    journal.record(tree, intent)
    await finish_delete(tree, live, journal, intent)
    return merges


async def finish_delete(tree: VMTree, live: LiveChains | None, journal: Journal, intent: Intent) -> None:
    """Run the merges of a delete that are not recorded yet, then remove the merged files."""
    snap = tree.snapshots.get(intent.snapshot)
    for disk, kind in sorted(intent.merges.items()):
        if snap is None or disk not in snap.nodes:
            continue                        # recorded before an interruption
        merge = tree.merge(snap, disk, kind)

        def record(snap: Snapshot = snap, merge: Merge = merge) -> None:
            tree.apply_merge(snap, merge)
            intent.obsolete.append(merge.obsolete_file)
            journal.record(tree, intent)
        await _merge(tree, live, merge, intent.rate_limit, record)
    if live is not None:
        # A merge recorded by a process that died before it closed the merged layer in QEMU:
        # left open, that node holds its backing layer, and every later live snapshot fails.
        for file in intent.obsolete:
            await live.forget_file(file)
    finish_recorded(tree, journal, intent)


async def _merge(tree: VMTree, live: LiveChains | None, merge: Merge, rate_limit: int | None,
                 record: Callable[[], None]) -> None:
    """One disk's merge; `record` runs once the files hold the merged state, before anything
    that state no longer needs is closed."""
    in_chains = await live.open_files() if live is not None else set()
    node = merge.node
    if merge.kind == "commit":
        child = merge.children[0]
        child_file = child.file             # record() moves the child's node into the node's file
        grandchildren = [g.file for g in tree.children(child)]

        async def repoint_and_record() -> None:
            # QEMU re-points the layer above a live intermediate commit; other children are files.
            for grandchild in grandchildren:
                if grandchild not in in_chains:
                    await asyncio.to_thread(offline.repoint, grandchild, node.file)
            record()
        if live is not None and child_file in in_chains:
            await live.commit(child_file, node.file, rate_limit, repoint_and_record)
        elif live is not None and node.file in in_chains:
            # The node's only child left the chain: this commit was done before an interruption.
            await repoint_and_record()
            await live.forget_file(child_file)
        else:
            await asyncio.to_thread(offline.commit, child_file, node.file, rate_limit, child.snapshot is None)
            await repoint_and_record()
    elif merge.kind == "pull":
        below_layer = await asyncio.to_thread(offline.read_layer, node.file)
        below = below_layer.backing
        for child in merge.children:
            backing = await _backing_of(live, child.file, in_chains)
            if backing == below:
                continue                    # pulled before an interruption
            if backing != node.file:
                raise ChainError(f"{merge.disk}: {child.file} is backed by {backing}, expected {node.file} "
                                 f"(or {below} once pulled)")
            if live is not None and child.file in in_chains:
                await live.pull(node.file, child.file, rate_limit)
            else:
                await asyncio.to_thread(offline.pull, child.file, below, below_layer.backing_format)
        record()
        if live is not None:
            await live.forget_file(node.file)
    else:
        record()


async def _backing_of(live: LiveChains | None, file: str, in_chains: set[str]) -> str | None:
    if live is not None and file in in_chains:
        node = (await live.graph()).by_file(file)
        return node.backing_file if node else None
    return (await asyncio.to_thread(offline.read_layer, file)).backing


def _create_overlays(tree: VMTree, layers: list[NewLayer]) -> None:
    """Each old active layer keeps a frozen copy of its recording bitmaps, as after a live
    snapshot (see live.py)."""
    try:
        for layer in layers:
            offline.create_overlay(tree.active(layer.disk).file, layer.file)
    except BaseException:
        remove_files([layer.file for layer in layers])
        raise


def _restore(tree: VMTree, saved: dict) -> None:
    again = VMTree.from_dict(saved)
    tree.nodes, tree.snapshots = again.nodes, again.snapshots


def remove_files(files: list[str]) -> None:
    for file in files:
        Path(file).unlink(missing_ok=True)
