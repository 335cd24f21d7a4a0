"""Snapshots of a VM's disks: the tree lives in the catalog, chain/ changes the image files.

Every change runs under the VM's lock (no start or stop meanwhile), and as a job on the VM's
resource (jobs/kinds/snapshot.py), so never beside the VM's backup, which reads the layers a
change would merge or move. First an operation an
earlier crash interrupted is finished or rolled back (its intent record says which, see
chain/intent.py); then the tree is reconciled with what QEMU has open (running VM) or what the
image files say (stopped VM), and a disagreement stops the change. chain/ records the tree, the
VM's disk paths (the active layers, which the VM opens at its next start) and the intent
together, in one catalog transaction per step.
"""
from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from appliance.backups.interrupted import clear_interrupted_backups
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError, NotFoundError
from appliance.names import LABEL
from appliance.vms.service import VMService
from chain import (
    DEFAULT_CHAIN_LIMIT,
    ChainError,
    ChainMismatchError,
    Intent,
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
    recover,
    repair,
    revert,
    take_snapshot,
)
from chain.inspect import measure
from chain.reconcile import RealChains
from chain.tree import new_id
from vmm import VMError, VMSpec
from vmm.network_disks import network_disk
from vmm.rundir import exclusive

from .records import SnapshotIntentRecord, SnapshotTreeRecord

CHAIN_LIMIT_ENV = "CAIRN_SNAPSHOT_CHAIN_LIMIT"
# Loading a saved memory state reads the file once; TCG on a busy host is slow at it.
RESUME_TIMEOUT = 300.0


def chain_limit_from_env() -> int:
    text = os.environ.get(CHAIN_LIMIT_ENV, str(DEFAULT_CHAIN_LIMIT))
    if not text.isdigit() or int(text) < 2:
        raise ConflictError(f"{CHAIN_LIMIT_ENV} must be an integer >= 2, not {text!r}")
    return int(text)


@dataclass
class CheckResult:
    problems: list[str]
    repaired: list[str] = field(default_factory=list)
    # What finishing or rolling back an interrupted operation did before the check.
    recovered: list[str] = field(default_factory=list)


class CatalogJournal:
    """chain.Journal on the catalog: the tree, the VM's disk paths and the intent, together."""

    def __init__(self, catalog: sessionmaker[Session], vms: VMService):
        self.catalog = catalog
        self.vms = vms

    def record(self, tree: VMTree, intent: Intent | None, also: Callable[[Session], None] | None = None) -> None:
        """`also`: more changes to commit in the same transaction."""
        with self.catalog.begin() as s:
            if also is not None:
                also(s)
            rec = s.get(SnapshotTreeRecord, tree.vm)
            if rec is None:
                s.add(SnapshotTreeRecord(vm_name=tree.vm, tree=tree.to_dict()))
            else:
                rec.tree = tree.to_dict()
            self.vms.point_disks(s, tree.vm, {d: tree.active(d).file for d in tree.disks()})
            pending = s.get(SnapshotIntentRecord, tree.vm)
            if intent is None:
                if pending is not None:
                    s.delete(pending)
            elif pending is None:
                s.add(SnapshotIntentRecord(vm_name=tree.vm, intent=intent.to_dict()))
            else:
                pending.intent = intent.to_dict()

    def pending(self, vm: str) -> Intent | None:
        """The intent an interrupted operation left. One without a tree belongs to a VM that was
        deleted or restored over since: nothing of it is left to finish."""
        with self.catalog.begin() as s:
            rec = s.get(SnapshotIntentRecord, vm)
            if rec is None:
                return None
            if s.get(SnapshotTreeRecord, vm) is None:
                s.delete(rec)
                return None
            return Intent.from_dict(rec.intent)


class SnapshotService:
    def __init__(self, catalog: sessionmaker[Session], vms: VMService, chain_limit: int = DEFAULT_CHAIN_LIMIT):
        self.catalog = catalog
        self.vms = vms
        self.chain_limit = chain_limit
        self.journal = CatalogJournal(catalog, vms)

    def tree(self, vm: str) -> VMTree:
        """The VM's tree with each layer's size and bitmaps read from its file."""
        tree = self._load(self.vms.spec(vm))
        measure(tree.nodes.values())
        return tree

    def check_create(self, vm: str, name: str | None, automatic: bool = False, memory: bool = False) -> None:
        """Refuse now what create() would refuse before it changes anything: a name the VM's tree
        has, a manual snapshot on a full chain, the memory of a VM that does not run, a network disk."""
        _require_layerable(self.vms.spec(vm))
        with _as_user_errors():
            self._load(self.vms.spec(vm)).check_new_snapshot(name or new_id(), automatic, self.chain_limit)
        if memory and self.vms.driver.status(vm).state not in ("running", "paused"):
            raise _no_memory_to_save(vm)

    def check_revert(self, vm: str, ref: str, memory: bool | None = None) -> tuple[Snapshot, bool]:
        """Refuse now what revert() would refuse before it changes anything; returns the snapshot
        and whether the guest resumes from its memory state."""
        with _as_user_errors():
            tree = self._load(self.vms.spec(vm))
            snap = tree.snapshot(ref)
            tree.check_revert(snap)
        # Before anything, even the stop of a running VM: a clone must not read the layers it drops.
        self._require_active_unread(vm, tree, f"reverting VM {vm} to snapshot {snap.name}")
        resume = snap.memory is not None if memory is None else memory
        if resume and (snap.memory is None or not os.path.exists(snap.memory)):
            raise ConflictError(f"snapshot {snap.name} of VM {vm} has no memory state; revert its disks only "
                                "(--disk-only; the API's memory: false)")
        if not resume and self.vms.driver.status(vm).state in ("running", "paused"):
            raise ConflictError(f"VM {vm} is running: stop it before reverting to a snapshot without its "
                                "memory state (the running guest's memory would not match the reverted disks)")
        return snap, resume

    def check_delete(self, vm: str, ref: str, via: Via | None = None) -> None:
        """Refuse now what delete() would refuse before it changes anything: an unknown snapshot,
        a merge `via` that the tree's shape does not allow."""
        with _as_user_errors():
            tree = self._load(self.vms.spec(vm))
            tree.plan_delete(tree.snapshot(ref), via)

    def interrupted(self, vm: str) -> Intent | None:
        """An operation a crash interrupted, finished or rolled back by the next change or check."""
        return self.journal.pending(vm)

    async def create(self, vm: str, name: str | None = None, automatic: bool = False,
                     memory: bool = False) -> Snapshot:
        """`memory`: also save the running guest's memory, so a revert resumes it right there."""
        if name is not None:
            LABEL.check("snapshot", name)
        _require_layerable(self.vms.spec(vm))
        async with self._changing(vm) as (tree, live):
            snapshot_id = new_id()
            rotate = tree.check_new_snapshot(name or snapshot_id, automatic, self.chain_limit)
            if memory and live is None:
                raise _no_memory_to_save(vm)
            if rotate is not None:
                await delete_snapshot(tree, live, self.journal, rotate, None, None,
                                      self._merges_unread(vm, f"rotating out snapshot {rotate.name} of VM {vm}"))
            # Nothing else to ask: a snapshot only adds layers, the frozen ones keep their data.
            return await take_snapshot(tree, live, self.journal, snapshot_id, name or snapshot_id, automatic,
                                       utcnow(), memory)

    async def revert(self, vm: str, ref: str, memory: bool | None = None) -> Snapshot:
        """Go back to a snapshot. With its memory state (the default when it has one) the VM is
        stopped if it runs and started again from that state: the guest runs on from the
        instant of the snapshot. Without, only a stopped VM is reverted: a running guest's
        memory would not match the reverted disks."""
        snap, resume = self.check_revert(vm, ref, memory)
        if self.vms.driver.status(vm).state in ("running", "paused"):
            await self.vms.stop(vm, force=True)         # what it runs now is what the revert replaces
        async with self._changing(vm) as (tree, live):
            if live is not None:
                raise ConflictError(f"VM {vm} was started during the revert; nothing was changed")
            snap = tree.snapshot(ref)
            self._require_active_unread(vm, tree, f"reverting VM {vm} to snapshot {snap.name}")
            await revert(tree, self.journal, snap, utcnow())
        if resume:
            await self._resume_from(vm, snap)
        return snap

    async def delete(self, vm: str, ref: str, via: Via | None = None, rate_limit: int | None = None) -> list[Merge]:
        async with self._changing(vm) as (tree, live):
            snap = tree.snapshot(ref)
            return await delete_snapshot(tree, live, self.journal, snap, via, rate_limit,
                                         self._merges_unread(vm, f"deleting snapshot {snap.name} of VM {vm}"))

    async def check(self, vm: str, fix: bool = False) -> CheckResult:
        """What disagrees between the tree and the disks, once an interrupted operation is
        finished or rolled back; with `fix`, adopt the disks' state (also when an interrupted
        operation cannot be finished)."""
        spec = self.vms.spec(vm)
        with self._locked(vm), _as_user_errors():
            async with self._live(vm) as live:
                try:
                    recovered = await self._recover(spec, live)
                except ConflictError as err:
                    if not fix:
                        raise
                    # What is on disk is adopted below, whatever the operation left.
                    self.journal.record(self._load(spec), None)
                    recovered = [f"gave up: {err}"]
                tree = self._load(spec)
                real = await _real_chains(self.vms.spec(vm), live)
                result = CheckResult(problems(tree, real), recovered=recovered)
                if fix and result.problems:
                    result.repaired = repair(tree, real, utcnow())
                    self.journal.record(tree, None)
        return result

    # -- internals ----------------------------------------------------------------------------

    def _merges_unread(self, vm: str, doing: str) -> Callable[[list[Merge]], None]:
        """A delete's approval: no other VM (an instant clone) reads a file its merges rewrite or remove."""
        def approve(merges: list[Merge]) -> None:
            self.vms.require_unread([f for m in merges for f in m.touched_files], doing, besides=vm)
        return approve

    def _require_active_unread(self, vm: str, tree: VMTree, doing: str) -> None:
        """A revert removes the active layers (what was written since the last snapshot)."""
        self.vms.require_unread([tree.active(d).file for d in tree.disks()], doing, besides=vm)

    async def _resume_from(self, vm: str, snap: Snapshot) -> None:
        """Start the VM from the snapshot's memory state. Straight through the driver: the
        VM's disks were just made, VMService.start's checks are for a VM at rest."""
        if snap.memory is None:
            raise ConflictError(f"snapshot {snap.name} of VM {vm} lost its memory state during the revert; "
                                "its disks are reverted, start it to boot afresh")
        spec = self.vms.spec(vm)
        with _as_user_errors():
            await self.vms.driver.start(spec, incoming=f"exec:cat {shlex.quote(snap.memory)}")
            deadline = time.monotonic() + RESUME_TIMEOUT
            # The state says the guest was paused (it is, while it is saved), so QEMU holds it
            # paused once loaded; a state that cannot be loaded makes QEMU exit.
            while (state := await self.vms.driver.run_state(vm)) != "paused":
                if state != "inmigrate" or time.monotonic() > deadline:
                    raise ConflictError(f"VM {vm} did not resume from the memory state of {snap.name} "
                                        f"(QEMU says {state}); its disks are reverted, start it to boot afresh")
                await asyncio.sleep(0.1)
            await self.vms.driver.resume(vm)

    @asynccontextmanager
    async def _changing(self, vm: str) -> AsyncIterator[tuple[VMTree, LiveChains | None]]:
        """The reconciled tree and, for a running VM, its live chains (chain/ records changes)."""
        spec = self.vms.spec(vm)
        with self._locked(vm), _as_user_errors():
            async with self._live(vm) as live:
                await self._recover(spec, live)
                spec = self.vms.spec(vm)
                tree = self._load(spec)
                if live is not None:
                    await clear_interrupted_backups(self.catalog, vm, [d.name for d in spec.disks], live.qmp)
                    await live.require_idle()
                if found := problems(tree, await _real_chains(spec, live)):
                    raise ChainMismatchError(vm, found)
                try:
                    yield tree, live
                except (ChainError, VMError) as err:
                    if (intent := self.journal.pending(vm)) is None:
                        raise
                    raise ConflictError(f"VM {vm}: the {intent.describe()} was interrupted: {err}; the next "
                                        f"snapshot command or `cairn snapshot check {vm}` finishes it") from err

    async def _recover(self, spec: VMSpec, live: LiveChains | None) -> list[str]:
        intent = self.journal.pending(spec.name)
        if intent is None:
            return []
        paused_by_owner = self.vms.driver.status(spec.name).state == "paused"
        try:
            return await recover(self._load(spec), live, self.journal, intent, paused_by_owner)
        except (ChainError, VMError) as err:
            raise ConflictError(f"VM {spec.name}: the interrupted {intent.describe()} could not be finished: {err}; "
                                "it is tried again before the next snapshot operation") from err

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


async def _real_chains(spec: VMSpec, live: LiveChains | None) -> RealChains:
    """What QEMU has open, or what the files the VM will open next are backed by."""
    if live is not None:
        return live_chains(await live.graph())
    return offline_chains({d.name: d.path for d in spec.disks})


def _require_layerable(spec: VMSpec) -> None:
    """A snapshot puts a qcow2 layer file on top of each disk, in the VM's folder. A network disk
    (an RBD image, an NBD export) has no folder beside it: its layers would live on this host's
    disk, so the VM would depend on this host and on the image at once. Refused, saying what works."""
    if remote := {d.name: found for d in spec.disks if (found := network_disk(d.path)) is not None}:
        names = ", ".join(f"{name} ({disk.describe()})" for name, disk in remote.items())
        raise ConflictError(f"VM {spec.name} cannot have snapshots: {names} is a network disk, and Cairn's snapshot "
                            "layers are qcow2 files beside a disk; back the VM up instead (incremental while it "
                            "runs), or use the storage's own snapshots (rbd snap create)")


def _no_memory_to_save(vm: str) -> ConflictError:
    return ConflictError(f"VM {vm} is not running: it has no memory state to save")


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
    return {"id": snap.id, "name": snap.name, "created": snap.created.isoformat(), "automatic": snap.automatic,
            "memory": snap.memory is not None}
