"""Snapshot operations on a VM's tree: each changes the image files (through QMP for layers a
running VM has open, with qemu-img otherwise) and then records the change in the model.

A failure leaves the model describing what the files are: a multi-disk delete that fails on
the second disk has finished the first, and the model says so (the snapshot then covers only
the disks it still has a layer on).
"""
from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

from vmm import create_disk

from . import offline
from .inspect import measure
from .live import LiveChains, NewLayer
from .tree import Merge, Snapshot, Via, VMTree, new_id


def new_layers(tree: VMTree) -> list[NewLayer]:
    """One new active layer per disk, next to the disk's current one: <dir>/<disk>.<node>.qcow2."""
    layers = []
    for disk in tree.disks():
        node_id = new_id()
        folder = os.path.dirname(tree.active(disk).file)
        layers.append(NewLayer(disk, node_id, os.path.join(folder, f"{disk}.{node_id}.qcow2")))
    return layers


async def take_snapshot(tree: VMTree, live: LiveChains | None, snapshot_id: str, name: str, automatic: bool,
                        now: datetime) -> Snapshot:
    layers = new_layers(tree)
    if live is not None:
        await live.snapshot(layers)
    else:
        await asyncio.to_thread(_snapshot_offline, tree, layers)
    return tree.take_snapshot(snapshot_id, name, automatic, now, {l.disk: (l.node_id, l.file) for l in layers})


async def revert(tree: VMTree, snap: Snapshot, now: datetime) -> None:
    """Only for a stopped VM: the running guest's memory would not match the reverted disks."""
    layers = new_layers(tree)
    created = []
    try:
        for layer in layers:
            await asyncio.to_thread(create_disk, layer.file, None, backing=tree.nodes[snap.nodes[layer.disk]].file)
            created.append(layer.file)
        dropped = tree.revert(snap, now, {l.disk: (l.node_id, l.file) for l in layers})
    except BaseException:
        _remove(created)
        raise
    _remove(dropped)


async def delete_snapshot(tree: VMTree, live: LiveChains | None, snap: Snapshot, via: Via | None,
                          rate_limit: int | None) -> list[Merge]:
    nodes = [tree.nodes[n] for n in snap.nodes.values()]
    # plan_delete weighs the data each way would move: measure what it looks at.
    await asyncio.to_thread(measure, nodes + [c for n in nodes for c in tree.children(n)])
    merges = tree.plan_delete(snap, via)
    for merge in merges:
        await _merge(tree, live, merge, rate_limit)
        tree.apply_merge(snap, merge)
    return merges


async def _merge(tree: VMTree, live: LiveChains | None, merge: Merge, rate_limit: int | None) -> None:
    open_files = await live.open_files() if live is not None else set()
    node = merge.node
    if merge.kind == "commit":
        child = merge.children[0]
        if child.file in open_files:
            await live.commit(child.file, node.file, rate_limit)
        else:
            await asyncio.to_thread(offline.commit, child.file, node.file, rate_limit, child.snapshot is None)
        # QEMU re-points the layer above a live intermediate commit; other children are files.
        for grandchild in tree.children(child):
            if grandchild.file not in open_files:
                await asyncio.to_thread(offline.repoint, grandchild.file, node.file)
    elif merge.kind == "pull":
        below = await asyncio.to_thread(offline.read_layer, node.file)
        for child in merge.children:
            if child.file in open_files:
                await live.pull(node.file, child.file, rate_limit)
            else:
                await asyncio.to_thread(offline.pull, child.file, below.backing, below.backing_format)
        if node.file in open_files:
            await live.forget_file(node.file)
    _remove([merge.obsolete_file])


def _snapshot_offline(tree: VMTree, layers: list[NewLayer]) -> None:
    created = []
    try:
        for layer in layers:
            offline.create_overlay(tree.active(layer.disk).file, layer.file)
            created.append(layer.file)
    except BaseException:
        _remove(created)
        raise
    for layer in layers:
        offline.release_bitmaps(tree.active(layer.disk).file)


def _remove(files: list[str]) -> None:
    for file in files:
        Path(file).unlink(missing_ok=True)
