"""The snapshot tree of one VM, as a pure model: no I/O, so every rule can be tested alone.

Each disk has a tree of qcow2 layers (nodes). A node's content is its whole backing chain, root
first. A snapshot freezes the VM's active layer of every disk at one instant: those layers become
the snapshot's nodes (read-only from then on) and empty overlays on them become the new active
layers. So a snapshot's content per disk is the chain up to its node, and the VM's current
position per disk is its active node (the only node without a snapshot).

Deleting a snapshot removes its node N as a point in time while every other point keeps its
content: either N's data is pulled up into each child (`pull`, N's file goes), or N's only child
C is committed down into N (`commit`, C's node moves into N's file and C's file goes). Committing
N into its parent instead would change the parent, which is itself a snapshot.
"""
from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from .errors import TreeError, UnknownSnapshotError

Via = Literal["commit", "pull"]
MergeKind = Literal["commit", "pull", "drop"]
DEFAULT_CHAIN_LIMIT = 128


def new_id() -> str:
    """Node and snapshot ids: short, random, valid as (part of) a QEMU node name."""
    return "n" + secrets.token_hex(4)


@dataclass
class Node:
    id: str
    disk: str
    file: str
    parent: str | None
    created: datetime
    # The snapshot whose point in time this layer holds; None for the disk's active layer.
    snapshot: str | None = None
    # Allocated bytes of the file and the dirty bitmaps in it, as last seen (refreshed on listing).
    size: int = 0
    bitmaps: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    id: str
    name: str
    created: datetime
    automatic: bool
    nodes: dict[str, str]          # disk -> node id
    # The guest's RAM and device state saved with the disks (a live snapshot that asked for it)
    memory: str | None = None


@dataclass(frozen=True)
class Merge:
    """How one disk's node of a deleted snapshot goes away (see the module docstring)."""
    disk: str
    kind: MergeKind
    node: Node
    children: tuple[Node, ...]
    obsolete_file: str             # the file nobody needs once the merge is done

    @property
    def touched_files(self) -> list[str]:
        """The files the merge writes into or removes: a commit rewrites the node's file and
        removes the child's; a pull writes each child's file and removes the node's."""
        if self.kind == "commit":
            return [self.node.file, self.children[0].file]
        return [self.node.file, *(c.file for c in self.children)]

    @property
    def moved_bytes(self) -> int:
        if self.kind == "commit":
            return self.children[0].size
        return self.node.size * len(self.children)


@dataclass
class VMTree:
    vm: str
    nodes: dict[str, Node] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)

    @classmethod
    def new(cls, vm: str, disk_files: Mapping[str, str], now: datetime) -> VMTree:
        """A VM without snapshots: each disk's file is its root and active node."""
        tree = cls(vm)
        for disk, file in disk_files.items():
            node = Node(new_id(), disk, file, None, now)
            tree.nodes[node.id] = node
        return tree

    # -- reading ------------------------------------------------------------------------------

    def disks(self) -> list[str]:
        return sorted(n.disk for n in self.nodes.values() if n.snapshot is None)

    def active(self, disk: str) -> Node:
        for node in self.nodes.values():
            if node.disk == disk and node.snapshot is None:
                return node
        raise TreeError(f"VM {self.vm} has no disk {disk}")

    def children(self, node: Node) -> list[Node]:
        return sorted((n for n in self.nodes.values() if n.parent == node.id), key=lambda n: n.created)

    def chain(self, node: Node) -> list[Node]:
        """The node and its ancestors, top first."""
        chain = [node]
        while chain[-1].parent is not None:
            chain.append(self.nodes[chain[-1].parent])
        return chain

    def active_chain(self, disk: str) -> list[Node]:
        return self.chain(self.active(disk))

    def snapshot(self, ref: str) -> Snapshot:
        """By id, else by name."""
        if ref in self.snapshots:
            return self.snapshots[ref]
        for snap in self.snapshots.values():
            if snap.name == ref:
                return snap
        raise UnknownSnapshotError(self.vm, ref)

    def snapshot_parent(self, snap: Snapshot) -> Snapshot | None:
        """The snapshot this one was taken after (the same on every disk it covers)."""
        node = self.nodes[snap.nodes[min(snap.nodes)]]
        return self._snapshot_of(node.parent)

    def current_parent(self) -> Snapshot | None:
        """The snapshot the VM's active layers are based on: where a new snapshot would hang."""
        disks = self.disks()
        return self._snapshot_of(self.active(disks[0]).parent) if disks else None

    def node_size(self, snap: Snapshot) -> int:
        return sum(self.nodes[n].size for n in snap.nodes.values())

    def total_size(self) -> int:
        return sum(n.size for n in self.nodes.values())

    # -- snapshots ----------------------------------------------------------------------------

    def check_new_snapshot(self, name: str, automatic: bool, limit: int) -> Snapshot | None:
        """Whether a new snapshot may be taken; returns the automatic snapshot that must be
        deleted first to stay within the chain limit (None if there is room)."""
        if any(s.name == name for s in self.snapshots.values()):
            raise TreeError(f"VM {self.vm} already has a snapshot named {name!r}")
        longest = max((len(self.active_chain(d)) for d in self.disks()), default=0)
        if longest < limit:
            return None
        if not automatic:
            raise TreeError(f"VM {self.vm}: the snapshot chain already has {longest} of at most {limit} layers; "
                            "delete a snapshot first (only automatic snapshots rotate out by themselves)")
        on_chain = [s for s in self.snapshots.values() if s.automatic and self._on_active_chain(s)]
        if not on_chain:
            raise TreeError(f"VM {self.vm}: the snapshot chain already has {longest} of at most {limit} layers "
                            "and none of them is an automatic snapshot that could rotate out")
        return min(on_chain, key=lambda s: s.created)

    def take_snapshot(self, snapshot_id: str, name: str, automatic: bool, now: datetime,
                      overlays: Mapping[str, tuple[str, str]], memory: str | None = None) -> Snapshot:
        """Record a snapshot taken: overlays maps disk -> (new node id, overlay file)."""
        self._require_all_disks(overlays, "a snapshot")
        snap = Snapshot(snapshot_id, name, now, automatic, {}, memory)
        for disk, (node_id, file) in overlays.items():
            frozen = self.active(disk)
            frozen.snapshot = snap.id
            snap.nodes[disk] = frozen.id
            self.nodes[node_id] = Node(node_id, disk, file, frozen.id, now)
        self.snapshots[snap.id] = snap
        return snap

    def revert(self, snap: Snapshot, now: datetime, overlays: Mapping[str, tuple[str, str]]) -> list[str]:
        """Make new overlays on the snapshot's nodes the active layers. The old active layers
        (what was written since the last snapshot) are dropped; returns their files."""
        self._require_all_disks(overlays, "a revert")
        self.check_revert(snap)
        dropped = []
        for disk, (node_id, file) in overlays.items():
            old = self.active(disk)
            dropped.append(old.file)
            del self.nodes[old.id]
            self.nodes[node_id] = Node(node_id, disk, file, snap.nodes[disk], now)
        return dropped

    def check_revert(self, snap: Snapshot) -> None:
        """A revert needs a layer of the snapshot on every disk (an adopted one may have one)."""
        missing = [d for d in self.disks() if d not in snap.nodes]
        if missing:
            raise TreeError(f"snapshot {snap.name} does not cover disk {', '.join(missing)} of VM {self.vm}: "
                            "it cannot be reverted to")

    def plan_delete(self, snap: Snapshot, via: Via | None = None) -> list[Merge]:
        """How each disk's node of `snap` would go away; raises if `via` cannot work."""
        merges = []
        for disk, node_id in sorted(snap.nodes.items()):
            node = self.nodes[node_id]
            merges.append(self.merge(snap, disk, self._merge_kind(snap, node, tuple(self.children(node)), via)))
        return merges

    def merge(self, snap: Snapshot, disk: str, kind: MergeKind) -> Merge:
        """The merge of `snap`'s layer of `disk` in a way chosen before (an interrupted delete)."""
        node = self.nodes[snap.nodes[disk]]
        children = tuple(self.children(node))
        if (kind == "drop") != (not children) or (kind == "commit" and len(children) != 1):
            raise TreeError(f"snapshot {snap.name}: its layer of {disk} has {len(children)} children now, "
                            f"it cannot go by {kind}")
        return Merge(disk, kind, node, children, children[0].file if kind == "commit" else node.file)

    def apply_merge(self, snap: Snapshot, merge: Merge) -> None:
        """Record one disk's merge of plan_delete(snap) as done; the snapshot goes with its
        last layer."""
        node = merge.node
        if merge.kind == "commit":
            # The child's data now lives in the node's file: the child takes it over.
            merge.children[0].file = node.file
        for child in merge.children:
            child.parent = node.parent
        del self.nodes[node.id]
        self._detach(snap, merge.disk)

    # -- repair -------------------------------------------------------------------------------

    def adopt_chain(self, disk: str, files: list[str], now: datetime) -> list[str]:
        """Take `files` (the disk's real chain, top first) as the truth for its active chain.

        Files the model knows keep their node; unknown files become nodes of automatic
        snapshots named "adopted-<id>"; the top becomes the active node. Nodes whose files
        are no longer in the chain or on disk are left to drop_nodes(). Returns notes.
        """
        if not files:
            raise TreeError(f"{disk}: no image file to adopt as its chain")
        by_file = {n.file: n for n in self.nodes.values() if n.disk == disk}
        known = [i for i, f in enumerate(files) if f in by_file]
        # Below the lowest file the model knows lies a base image Cairn does not manage.
        files = files[:known[-1] + 1] if known else files[:1]
        notes = []
        parent: Node | None = None
        for file in reversed(files):
            node = by_file.get(file)
            if node is None:
                node = by_file[file] = Node(new_id(), disk, file, None, now)
                self.nodes[node.id] = node
                notes.append(f"{disk}: adopted {file}")
            node.parent = parent.id if parent else None
            parent = node
        top = by_file[files[0]]
        if top.snapshot is not None:
            self._detach(self.snapshots[top.snapshot], disk)
            top.snapshot = None
            notes.append(f"{disk}: the active layer is {top.file}")
        # Every other layer of the disk holds a point in time, so it belongs to a snapshot.
        for node in list(self.nodes.values()):
            if node.disk == disk and node is not top and node.snapshot is None:
                self._freeze_adopted(node, now)
                notes.append(f"{disk}: {node.file} is kept as snapshot adopted-{node.id}")
        return notes

    def drop_nodes(self, gone: set[str]) -> list[str]:
        """Forget the nodes in `gone` (ids), everything built on them, and snapshots left
        without a node on some disk they covered. Returns notes."""
        notes = []
        doomed = set(gone)
        grew = True
        while grew:
            more = {n.id for n in self.nodes.values() if n.parent in doomed} - doomed
            doomed |= more
            grew = bool(more)
        for node_id in doomed:
            node = self.nodes.pop(node_id)
            if node.snapshot is None:
                raise TreeError(f"VM {self.vm}: the active layer {node.file} of {node.disk} would be dropped")
            notes.append(f"{node.disk}: forgot {node.file}")
        for snap in list(self.snapshots.values()):
            if any(n in doomed for n in snap.nodes.values()):
                for node_id in snap.nodes.values():
                    if node_id in self.nodes:
                        self._freeze_adopted(self.nodes[node_id], snap.created)
                del self.snapshots[snap.id]
                notes.append(f"dropped snapshot {snap.name}: a layer of it is gone")
        return notes

    # -- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm,
                "nodes": [{**asdict(n), "created": n.created.isoformat()} for n in self.nodes.values()],
                "snapshots": [{**asdict(s), "created": s.created.isoformat()} for s in self.snapshots.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMTree:
        tree = cls(data["vm"])
        for n in data["nodes"]:
            tree.nodes[n["id"]] = Node(**{**n, "created": datetime.fromisoformat(n["created"])})
        for s in data["snapshots"]:
            tree.snapshots[s["id"]] = Snapshot(**{**s, "created": datetime.fromisoformat(s["created"])})
        return tree

    # -- internals ----------------------------------------------------------------------------

    def _snapshot_of(self, node_id: str | None) -> Snapshot | None:
        node = self.nodes.get(node_id) if node_id else None
        return self.snapshots.get(node.snapshot) if node and node.snapshot else None

    def _on_active_chain(self, snap: Snapshot) -> bool:
        return all(self.nodes[n] in self.active_chain(d) for d, n in snap.nodes.items())

    def _require_all_disks(self, overlays: Mapping[str, Any], what: str) -> None:
        if sorted(overlays) != self.disks():
            raise TreeError(f"{what} of VM {self.vm} needs a new layer for each of its disks "
                            f"{', '.join(self.disks())}, got {', '.join(sorted(overlays)) or 'none'}")

    def _merge_kind(self, snap: Snapshot, node: Node, children: tuple[Node, ...], via: Via | None) -> MergeKind:
        if not children:
            return "drop"       # nothing is built on it: its file just goes
        if len(children) > 1:
            if via == "commit":
                raise TreeError(f"snapshot {snap.name}: its layer of {node.disk} has {len(children)} children "
                                "(branches); committing one of them into it would change the others. "
                                "Use --via pull, which copies the layer into each child")
            return "pull"
        if via is not None:
            return via
        # Commit moves the child's data down, pull moves the node's data up: move less.
        return "commit" if children[0].size <= node.size else "pull"

    def _freeze_adopted(self, node: Node, now: datetime) -> None:
        snap = Snapshot(node.id, f"adopted-{node.id}", now, True, {node.disk: node.id})
        self.snapshots[snap.id] = snap
        node.snapshot = snap.id

    def _detach(self, snap: Snapshot, disk: str) -> None:
        """The snapshot no longer has a layer of `disk`; with none left it is gone."""
        del snap.nodes[disk]
        if not snap.nodes:
            del self.snapshots[snap.id]
