"""Compare the model with what QEMU really has open (running VM) or what the image files say
(stopped VM), and, on request, adopt the real state as the truth.

The real chain of a disk is read top first: from QEMU's graph (the device's root node and its
backing nodes), or from `qemu-img info --backing-chain` of the file QEMU would open next. The
model's active chain must be its beginning; what lies below the model's root is a base image
Cairn does not manage. Layers off the active chain (older branches) are checked on disk: the
file exists and its backing file is its parent's.
"""
from __future__ import annotations

import os
from datetime import datetime

from vmm import ImageError, image_info

from .errors import ChainError
from .graph import BlockGraph
from .inspect import backing_chain
from .tree import Node, VMTree

# disk -> its real chain (files, top first), or the reason it cannot be read
RealChains = dict[str, list[str] | str]


def live_chains(graph: BlockGraph) -> RealChains:
    return {disk: [n.file for n in graph.chain(disk)] for disk in graph.roots}


def offline_chains(tops: dict[str, str]) -> RealChains:
    chains: RealChains = {}
    for disk, top in tops.items():
        try:
            chains[disk] = [layer.path for layer in backing_chain(top)]
        except ChainError as err:
            chains[disk] = str(err)
    return chains


def problems(tree: VMTree, real: RealChains) -> list[str]:
    """Everything on which the model and reality disagree; [] if they agree."""
    found = []
    for disk in tree.disks():
        model = [n.file for n in tree.active_chain(disk)]
        chain = real.get(disk)
        if chain is None:
            found.append(f"the VM has no disk {disk}")
        elif isinstance(chain, str):
            found.append(f"{disk}: {chain}")
        elif chain[:len(model)] != model:
            found.append(f"{disk}: expected the chain {' <- '.join(reversed(model))}, "
                         f"found {' <- '.join(reversed(chain))}")
    for disk in sorted(set(real) - set(tree.disks())):
        found.append(f"disk {disk} is not in the snapshot tree")
    on_active = _active_node_ids(tree)
    found += filter(None, (_layer_problem(tree, node, on_active) for node in tree.nodes.values()))
    return found


def repair(tree: VMTree, real: RealChains, now: datetime) -> list[str]:
    """Adopt `real` as the active chain of each disk, then forget layers whose files are gone or
    whose backing file is not their parent's, with everything built on them (files stay on
    disk). Returns what was changed, one note per change."""
    notes = []
    for disk in tree.disks():
        chain = real.get(disk)
        if not isinstance(chain, list):
            raise ChainError(f"cannot repair disk {disk} of VM {tree.vm}: "
                             f"{chain or 'the VM does not have it'}; restore it from a backup")
        notes += tree.adopt_chain(disk, chain, now)
    on_active = _active_node_ids(tree)
    notes += tree.drop_nodes({n.id for n in tree.nodes.values() if _layer_problem(tree, n, on_active)})
    return notes


def _active_node_ids(tree: VMTree) -> set[str]:
    return {n.id for d in tree.disks() for n in tree.active_chain(d)}


def _layer_problem(tree: VMTree, node: Node, on_active: set[str]) -> str | None:
    if not os.path.exists(node.file):
        return f"{node.disk}: layer {node.file} is missing"
    if node.id in on_active or node.parent is None:
        return None       # the active chains are compared as a whole
    backing, expected = _backing_of(node.file), tree.nodes[node.parent].file
    if backing != expected:
        return f"{node.disk}: layer {node.file} is backed by {backing}, expected {expected}"
    return None


def _backing_of(file: str) -> str | None:
    try:
        return image_info(file).get("full-backing-filename")
    except ImageError as err:
        return f"(unreadable: {err})"
