"""Snapshots of a VM's disks: the tree lives in the catalog, chain/ changes the image files.

Every change runs under the VM's lock (no start or stop meanwhile) and only after the tree has
been reconciled with what QEMU has open (running VM) or what the image files say (stopped VM);
a disagreement stops it. Afterwards the tree and the VM's disk paths (the active layers, which
the VM opens at its next start) are saved in one catalog transaction, also when the operation
failed half-way, since chain/ keeps the model describing the files.
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from chain import (
    DEFAULT_CHAIN_LIMIT,
    ChainError,
    ChainMismatchError,
    LiveChains,
    Merge,
    Snapshot,
    UnknownSnapshotError,
    Via,
    VMTree,
    delete_snapshot,
    live_chains,
    offline_chains,
    problems,
    repair,
    revert,
    take_snapshot,
)
from chain.inspect import measure
from chain.reconcile import RealChains
from chain.tree import new_id
from vmm import VMSpec
from vmm.rundir import exclusive

from .catalog import SnapshotTreeRecord, utcnow
from .errors import ConflictError, NotFoundError
from .vms import VMService

CHAIN_LIMIT_ENV = "CAIRN_SNAPSHOT_CHAIN_LIMIT"


def chain_limit_from_env() -> int:
    text = os.environ.get(CHAIN_LIMIT_ENV, str(DEFAULT_CHAIN_LIMIT))
    if not text.isdigit() or int(text) < 2:
        raise ConflictError(f"{CHAIN_LIMIT_ENV} must be an integer >= 2, not {text!r}")
    return int(text)


@dataclass
class CheckResult:
    problems: list[str]
    repaired: list[str] = field(default_factory=list)


class SnapshotService:
    def __init__(self, catalog: sessionmaker[Session], vms: VMService, chain_limit: int = DEFAULT_CHAIN_LIMIT):
        self.catalog = catalog
        self.vms = vms
        self.chain_limit = chain_limit

    def tree(self, vm: str) -> VMTree:
        """The VM's tree with each layer's size and bitmaps read from its file."""
        tree = self._load(self.vms.spec(vm))
        measure(tree.nodes.values())
        return tree

    async def create(self, vm: str, name: str | None = None, automatic: bool = False) -> Snapshot:
        async with self._changing(vm) as (tree, live):
            snapshot_id = new_id()
            rotate = tree.check_new_snapshot(name or snapshot_id, automatic, self.chain_limit)
            if rotate is not None:
                await delete_snapshot(tree, live, rotate, None, None)
            return await take_snapshot(tree, live, snapshot_id, name or snapshot_id, automatic, utcnow())

    async def revert(self, vm: str, ref: str) -> Snapshot:
        """Only a stopped VM: its disks would change under a running guest's feet (memory
        state is not part of a snapshot yet)."""
        if self.vms.driver.status(vm).state in ("running", "paused"):
            raise ConflictError(f"VM {vm} is running: stop it before reverting to a snapshot (the running guest's "
                                "memory would not match the reverted disks)")
        async with self._changing(vm) as (tree, _):
            snap = tree.snapshot(ref)
            await revert(tree, snap, utcnow())
            return snap

    async def delete(self, vm: str, ref: str, via: Via | None = None, rate_limit: int | None = None) -> list[Merge]:
        async with self._changing(vm) as (tree, live):
            return await delete_snapshot(tree, live, tree.snapshot(ref), via, rate_limit)

    async def check(self, vm: str, fix: bool = False) -> CheckResult:
        """What disagrees between the tree and the disks; with `fix`, adopt the disks' state."""
        spec = self.vms.spec(vm)
        with self._locked(vm), _as_user_errors():
            async with self._live(vm) as live:
                tree = self._load(spec)
                real = await _real_chains(spec, live)
                result = CheckResult(problems(tree, real))
                if fix and result.problems:
                    result.repaired = repair(tree, real, utcnow())
                    self._save(tree)
        return result

    # -- internals ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _changing(self, vm: str) -> AsyncIterator[tuple[VMTree, LiveChains | None]]:
        """The reconciled tree and, for a running VM, its live chains; saved afterwards unless
        the reconciliation failed (then nothing changed)."""
        spec = self.vms.spec(vm)
        with self._locked(vm), _as_user_errors():
            async with self._live(vm) as live:
                tree = self._load(spec)
                if live is not None:
                    await live.require_idle()
                if found := problems(tree, await _real_chains(spec, live)):
                    raise ChainMismatchError(vm, found)
                try:
                    yield tree, live
                finally:
                    self._save(tree)

    @asynccontextmanager
    async def _live(self, vm: str) -> AsyncIterator[LiveChains | None]:
        """QMP access to the VM's chains if it runs (one session throughout), else None."""
        if self.vms.driver.status(vm).state not in ("running", "paused"):
            yield None
            return
        async with self.vms.driver.session(vm) as qmp:
            yield LiveChains(qmp)

    @contextmanager
    def _locked(self, vm: str) -> Iterator[None]:
        rundir = self.vms.driver.paths(vm)
        rundir.path.mkdir(parents=True, exist_ok=True)
        with exclusive(rundir, vm):
            yield

    def _load(self, spec: VMSpec) -> VMTree:
        with self.catalog() as s:
            rec = s.get(SnapshotTreeRecord, spec.name)
            if rec is not None:
                return VMTree.from_dict(rec.tree)
        return VMTree.new(spec.name, {d.name: d.path for d in spec.disks}, utcnow())

    def _save(self, tree: VMTree) -> None:
        with self.catalog.begin() as s:
            rec = s.get(SnapshotTreeRecord, tree.vm)
            if rec is None:
                s.add(SnapshotTreeRecord(vm_name=tree.vm, tree=tree.to_dict()))
            else:
                rec.tree = tree.to_dict()
            self.vms.point_disks(s, tree.vm, {d: tree.active(d).file for d in tree.disks()})


async def _real_chains(spec: VMSpec, live: LiveChains | None) -> RealChains:
    """What QEMU has open, or what the files the VM will open next are backed by."""
    if live is not None:
        return live_chains(await live.graph())
    return offline_chains({d.name: d.path for d in spec.disks})


@contextmanager
def _as_user_errors() -> Iterator[None]:
    """chain/'s errors in the appliance's terms (the CLI and the API report those)."""
    try:
        yield
    except UnknownSnapshotError as err:
        raise NotFoundError(str(err)) from err
    except ChainError as err:
        raise ConflictError(str(err)) from err


def tree_dict(tree: VMTree) -> dict[str, Any]:
    """The tree as JSON: snapshots (with their parent and per-disk layers) and the current position."""
    def layer(node_id: str) -> dict[str, Any]:
        n = tree.nodes[node_id]
        return {"node": n.id, "file": n.file, "size": n.size, "bitmaps": n.bitmaps}
    current = tree.current_parent()
    return {"vm": tree.vm, "total_size": tree.total_size(),
            "current": {"parent": current.id if current else None,
                        "disks": {d: layer(tree.active(d).id) for d in tree.disks()}},
            "snapshots": [{**snapshot_dict(s), "parent": (p.id if (p := tree.snapshot_parent(s)) else None),
                           "size": tree.node_size(s), "disks": {d: layer(n) for d, n in s.nodes.items()}}
                          for s in sorted(tree.snapshots.values(), key=lambda s: s.created)]}


def snapshot_dict(snap: Snapshot) -> dict[str, Any]:
    return {"id": snap.id, "name": snap.name, "created": snap.created.isoformat(), "automatic": snap.automatic}
