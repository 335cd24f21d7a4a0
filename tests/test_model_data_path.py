"""Model-based test of the whole data path, on real QEMU, qemu-nbd and a real store.

A shadow model says what every VM's disks and snapshots hold and what every backup in the
store holds: each disk is a row of 64 KiB slots, each slot the pattern byte last written there.
Random steps act on Cairn and on the model alike:

- writes (through QEMU's block layer when the VM runs, with qemu-io on the active layer when
  it is stopped), VM start and stop (QEMU without a guest OS: no TCG boot to wait for);
- snapshots, reverts, deletes by commit, pull or Cairn's choice, live or offline;
- clones, full and instant (an instant clone is streamed when it starts), VM deletes;
- backups, full or incremental, of stopped VMs (qemu-nbd) and running ones (pull, push);
- restores over a VM and as a new VM, prunes (keep-last) and GC (grace 0, repacking);
- injected crashes: a Cairn process of its own runs one of those operations and dies in it
  (fault_helpers.py): a backup or a restore SIGKILLed at its first progress report, a snapshot
  operation dead right after its k-th catalog transaction, a GC dead at its k-th change to the
  store (half-way through writing a file when that change is a write). Recovery then runs as
  a restart does (the sweep of dead owners' helpers and files, `snapshot check` of each VM),
  and the model takes the outcome Cairn promises: a snapshot operation finished or rolled
  back, never half; no backup from a killed backup, and the next one sees every write; the
  old disks after a killed restore; every backup whole after a killed GC.

After every step, checked against the model (a failure names the seed, the last steps, and
the file holding all of them):
- the content of every active and snapshot layer (one qemu-io run; a layer that is missing or
  does not open fails it, see test_snapshot_random.qemu_io_reads) of the VMs the step acted on
  and of the instant clones that may read their files; of every VM after a crash and every 5
  steps;
- every backup a step made: each disk restored and compared with the model of that instant;
  after a GC (or a killed one), every backup in the store, and the store verifies;
- no leaks: each VM's folder holds exactly its snapshot tree's files, and the VM folders are
  the model's VMs; no temporary file is left in Cairn's temp and scratch directories; QEMU runs
  for exactly the running VMs; after a step that starts helpers (backups, restores, clones,
  GC, crashes) none runs for the data dir; after a backup, the VM's active layers carry only
  the new checkpoint bitmap;
- every 20 steps and at the end: `snapshot check` finds no problem in any VM, and the store
  lists exactly the model's backups.

A run of 1000 steps (CAIRN_MODEL_STEPS, default 1000) does about 380 writes, 110 snapshots,
45 reverts, 60 snapshot deletes, 60 VM starts and stops, 125 backups (about a third of them
incremental, a fifth of them of a running VM by pull or push), 45 restores over a VM and 10 as
new VMs, 20 clones, 30 VM deletes, 35 prunes, 30 GCs and 55 injected crashes (about as many of
each kind); the counts, with the seconds each kind took, are printed at the end. It takes
about three minutes on this 2-core machine when it is otherwise quiet, twice that when other
QEMU tests share the cores. CAIRN_SEED=<seed> replays a run: the seed is printed first.
"""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backup_helpers import image_bitmaps, root_node
from fault_helpers import DIED, REFUSED, DyingBackend, Pause, die, forked, helpers_naming
from test_snapshot_random import qemu_io_reads

import procs
from appliance.backups.options import BackupOptions
from appliance.backups.retention import RetentionRules, apply_retention
from appliance.context import Appliance
from appliance.errors import ConflictError
from appliance.snapshots.records import SnapshotTreeRecord
from appliance.snapshots.service import CatalogJournal
from chain import VMTree
from dedup import Store, collect_garbage, verify_store
from restore import restore_disk
from vmm import disk_of_qdev

SLOT = 64 << 10
DISKS = {"vda": 32, "vdb": 16}          # 2 MiB and 1 MiB
ORIGIN = "m"                            # the first VM, never deleted
MAX_VMS = 4
MAX_RUNNING = 2
READ_ALL_EVERY = 5                      # steps: the content of every VM is read
CHECK_EVERY = 20                        # steps: snapshot check of every VM, the store's listing
STREAM_TIMEOUT = 60.0

Content = dict[str, list[int]]
# The steps that start helpers (qemu-nbd, nbdkit): after them none may be left running.
HELPER_STEPS = ("backup", "restore", "crash", "clone", "gc")


def blank() -> Content:
    return {disk: [0] * slots for disk, slots in DISKS.items()}


def copied(content: Content) -> Content:
    return {disk: list(slots) for disk, slots in content.items()}


def run(coro):
    return asyncio.run(coro)


def snapshot_names(tree: VMTree) -> set[str]:
    return {s.name for s in tree.snapshots.values()}


@dataclass
class VMModel:
    current: Content
    snapshots: dict[str, Content] = field(default_factory=dict)
    running: bool = False
    # An instant clone of that VM: it may read that VM's files (and that VM may refuse to change
    # them) until it is restored over; `linked` until it is first started (and streamed).
    instant_of: str | None = None
    linked: bool = False


@dataclass
class BackupModel:
    vm: str
    content: Content


@dataclass
class Model:
    vms: dict[str, VMModel]
    backups: dict[str, BackupModel] = field(default_factory=dict)   # oldest first

    def may_be_read(self, vm: str) -> bool:
        """Whether an instant clone (of a clone ...) of `vm` may still read its files: only
        then may Cairn refuse to change or remove them."""
        return any(self.may_read(other, vm) for other in self.vms)

    def may_read(self, reader: str, vm: str) -> bool:
        """Whether VM `reader` is an instant clone (of a clone ...) of `vm` that may read its files."""
        source = self.vms[reader].instant_of
        while source is not None:
            if source == vm:
                return True
            source = self.vms[source].instant_of if source in self.vms else None
        return False


class Runner:
    def __init__(self, app: Appliance, rng: random.Random, scratch: Path, temp: Path):
        self.app = app
        self.rng = rng
        self.scratch = scratch
        self.temp = temp
        self.model = Model({ORIGIN: VMModel(blank())})
        self.counts: Counter[str] = Counter()
        self.serial = 0
        self.log: list[str] = []
        self.touched: set[str] | None = None     # the VMs the last step acted on; None: all
        self.kind = ""                           # what the last step did, for the counts

    # -- choosing -----------------------------------------------------------------------------

    def touch(self, vm: str) -> str:
        """The step acts on `vm`: its content is checked after the step (see check())."""
        if self.touched is not None:
            self.touched.add(vm)
        return vm

    def new_name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def any_vm(self) -> str:
        return self.rng.choice(sorted(self.model.vms))

    def stopped_vms(self) -> list[str]:
        return sorted(n for n, v in self.model.vms.items() if not v.running)

    def step(self) -> str:
        self.touched = set()
        m = self.model
        running = sum(v.running for v in m.vms.values())
        with_snapshots = [n for n, v in m.vms.items() if v.snapshots]
        choices: list[tuple[Callable[[], str], float]] = [
            (self.write, 36), (self.snapshot, 9), (self.backup, 10), (self.crash, 5)]
        if with_snapshots:
            choices.append((self.delete_snapshot, 3 + sum(len(m.vms[n].snapshots) for n in with_snapshots)))
            if any(not m.vms[n].running for n in with_snapshots):
                choices.append((self.revert, 5))
        choices.append((self.start_or_stop, 6 if running < MAX_RUNNING else 2))
        if m.backups:
            # Prunes catch up with backups as they pile up, so the store's checks stay cheap.
            choices += [(self.restore_over, 3.5), (self.prune, 1 + len(m.backups) / 6), (self.gc, 2.5)]
            if len(m.vms) < MAX_VMS:
                choices.append((self.restore_new, 1.5))
        if len(m.vms) < MAX_VMS and self.stopped_vms():
            choices.append((self.clone, 3))
        if len(m.vms) > 1:
            choices.append((self.delete_vm, 2 + 2 * (len(m.vms) >= MAX_VMS)))
        operations, weights = zip(*choices, strict=True)
        operation = self.rng.choices(operations, weights)[0]
        self.kind = operation.__name__
        return operation()

    def refusal(self, vm: str, err: ConflictError, also: bool = False) -> str:
        """A refusal is right only where the model allows one: an instant clone may read the
        VM's files (or `also`, a reason of the step's own); nothing changed then."""
        assert also or self.model.may_be_read(vm), f"{vm}: refused without a reason the model knows: {err}"
        return f"refused: {err}"

    # -- steps --------------------------------------------------------------------------------

    def write(self) -> str:
        vm = self.touch(self.any_vm())
        model = self.model.vms[vm]
        disk = self.rng.choice(sorted(DISKS))
        first = self.rng.randrange(DISKS[disk])
        count = min(self.rng.randint(1, 4), DISKS[disk] - first)
        pattern = self.rng.randint(1, 255)
        command = f"write -P {pattern:#x} {first * SLOT} {count * SLOT}"
        if model.running:
            async def through_qemu() -> None:
                async with self.app.driver.session(vm) as s:
                    await s.qemu_io(await root_node(s, disk), command)
            run(through_qemu())
        else:
            active = self.active_file(vm, disk)
            if self.model.may_be_read(vm) and self.app.vms.readers([active], besides=vm):
                return f"write {vm} {disk}: skipped, an instant clone reads {active}"
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, active], check=True, capture_output=True)
        model.current[disk][first:first + count] = [pattern] * count
        return f"write {vm} {disk} {command}{' live' if model.running else ''}"

    def snapshot(self) -> str:
        vm = self.touch(self.any_vm())
        name = self.new_name("s")
        try:
            run(self.app.snapshots.create(vm, name))
        except ConflictError as err:
            return f"snapshot {vm} {name}: " + self.refusal(vm, err)
        model = self.model.vms[vm]
        model.snapshots[name] = copied(model.current)
        return f"snapshot {vm} {name}{' live' if model.running else ''}"

    def revert(self) -> str:
        vm = self.touch(self.rng.choice([n for n in self.stopped_vms() if self.model.vms[n].snapshots]))
        model = self.model.vms[vm]
        name = self.rng.choice(sorted(model.snapshots))
        try:
            run(self.app.snapshots.revert(vm, name))
        except ConflictError as err:
            return f"revert {vm} {name}: " + self.refusal(vm, err)
        model.current = copied(model.snapshots[name])
        return f"revert {vm} {name}"

    def delete_snapshot(self) -> str:
        vm = self.touch(self.rng.choice(sorted(n for n, v in self.model.vms.items() if v.snapshots)))
        model = self.model.vms[vm]
        name = self.rng.choice(sorted(model.snapshots))
        via = self.rng.choice(["commit", "pull", None])
        try:
            merges = run(self.app.snapshots.delete(vm, name, via=via))
        except ConflictError as err:
            # A layer with branches refuses a commit.
            return f"delete {vm} {name} via {via}: " + self.refusal(vm, err, via == "commit" and "children" in str(err))
        del model.snapshots[name]
        return f"delete {vm} {name} via {via}{' live' if model.running else ''}: " + \
            ", ".join(f"{m.disk} {m.kind}" for m in merges)

    def start_or_stop(self) -> str:
        running = [n for n, v in self.model.vms.items() if v.running]
        if len(running) >= MAX_RUNNING or not self.stopped_vms() or (running and self.rng.random() < 0.5):
            vm = self.touch(self.rng.choice(sorted(running)))
            run(self.app.vms.stop(vm, timeout=5, force=True))
            self.model.vms[vm].running = False
            return f"stop {vm}"
        vm = self.touch(self.rng.choice(self.stopped_vms()))
        try:
            run(self.app.vms.start(vm))
        except ConflictError as err:
            return f"start {vm}: " + self.refusal(vm, err)
        model = self.model.vms[vm]
        model.running = True
        if model.linked:
            self.wait_for_streams(vm)
            model.linked = False
            return f"start {vm} (streamed from {model.instant_of})"
        return f"start {vm}"

    def wait_for_streams(self, vm: str) -> None:
        deadline = time.monotonic() + STREAM_TIMEOUT
        while run(self.app.vms.clone_progress(vm)):
            assert time.monotonic() < deadline, f"{vm}: the streams of an instant clone never ended"
            time.sleep(0.02)

    def backup_options(self, vm: str) -> BackupOptions:
        transport = self.rng.choice(["pull", "pull", "push"]) if self.model.vms[vm].running else "pull"
        return BackupOptions(transport=transport)

    def backup(self) -> str:
        vm = self.touch(self.any_vm())
        full = self.rng.random() < 0.25
        options = self.backup_options(vm)
        manifest = run(self.app.backups.create(self.app.vms.spec(vm), full=full, options=options)).manifest
        assert manifest.kind == "full" or not full, manifest
        self.took_backup(vm, manifest.backup_id, manifest.checkpoint)
        how = f"{options.transport} " if self.model.vms[vm].running else ""
        return f"backup {vm} {how}{manifest.kind} {manifest.backup_id} {' '.join(manifest.notes)}"

    def took_backup(self, vm: str, backup_id: str, checkpoint: str | None) -> None:
        content = self.model.vms[vm].current
        self.check_restores(backup_id, content)
        self.model.backups[backup_id] = BackupModel(vm, copied(content))
        bitmaps = self.checkpoint_bitmaps(vm)
        assert all(names == [checkpoint] for names in bitmaps.values()), f"{vm}: bitmaps after {backup_id}: {bitmaps}"

    def restore_over(self) -> str:
        vm = self.touch(self.any_vm())
        backup_id = self.rng.choice(list(self.model.backups))
        if self.model.vms[vm].running:     # no guest OS to shut down on request: stopped at once
            run(self.app.vms.stop(vm, timeout=5, force=True))
            self.model.vms[vm].running = False
        try:
            run(self.app.restores.over_vm(backup_id, vm))
        except ConflictError as err:
            return f"restore {backup_id} over {vm}: " + self.refusal(vm, err)
        self.restored_over(vm, backup_id)
        return f"restore {backup_id} over {vm}"

    def restored_over(self, vm: str, backup_id: str) -> None:
        self.model.vms[vm] = VMModel(copied(self.model.backups[backup_id].content))

    def restore_new(self) -> str:
        backup_id = self.rng.choice(list(self.model.backups))
        name = self.touch(self.new_name("r"))
        self.app.restores.as_new_vm(backup_id, name)
        self.model.vms[name] = VMModel(copied(self.model.backups[backup_id].content))
        return f"restore {backup_id} as {name}"

    def clone(self) -> str:
        source = self.touch(self.rng.choice(self.stopped_vms()))
        mode = self.rng.choice(["full", "instant"])
        name = self.touch(self.new_name("c"))
        self.app.vms.clone(source, [name], mode)
        instant = mode == "instant"
        self.model.vms[name] = VMModel(copied(self.model.vms[source].current),
                                       instant_of=source if instant else None, linked=instant)
        return f"clone {source} {mode} as {name}"

    def delete_vm(self) -> str:
        vm = self.touch(self.rng.choice(sorted(set(self.model.vms) - {ORIGIN})))
        if self.model.vms[vm].running:
            run(self.app.vms.stop(vm, timeout=5, force=True))
            self.model.vms[vm].running = False
        try:
            self.app.vms.delete(vm)
        except ConflictError as err:
            return f"delete VM {vm}: " + self.refusal(vm, err)
        del self.model.vms[vm]
        return f"delete VM {vm}"

    def prune(self) -> str:
        vm = self.rng.choice(sorted({b.vm for b in self.model.backups.values()}))
        keep = self.rng.randint(1, 3)
        ids = [i for i, b in self.model.backups.items() if b.vm == vm]
        report = apply_retention(self.app.store, self.app.catalog, vm, RetentionRules(keep_last=keep))
        assert sorted(report.removed) == sorted(ids[:-keep]), (ids, report.removed)
        for backup_id in report.removed:
            del self.model.backups[backup_id]
        return f"prune {vm} keep-last {keep}: removed {len(report.removed)}"

    def gc(self) -> str:
        report = collect_garbage(self.app.store, grace=timedelta(0))
        self.check_store()
        return (f"gc: {report.packs_removed} packs removed, {report.packs_repacked} repacked, "
                f"{len(report.abandoned_backups_removed)} abandoned backups removed")

    # -- injected crashes -----------------------------------------------------------------------

    def crash(self) -> str:
        self.touched = None       # recovery checks every VM: so does the model
        kinds: list[Callable[[], str]] = [self.crash_snapshot_operation, self.crash_backup]
        if self.model.backups:
            kinds += [self.crash_gc]
            if self.stopped_vms():
                kinds += [self.crash_restore_over]
        crash = self.rng.choice(kinds)
        self.kind = crash.__name__
        return crash()

    def recover(self) -> None:
        """What the next start of Cairn does: sweep what dead owners left, then finish or roll
        back each VM's interrupted snapshot operation (snapshot check)."""
        procs.sweep()
        for vm in self.model.vms:
            assert run(self.app.snapshots.check(vm)).problems == [], vm

    def crash_snapshot_operation(self) -> str:
        vm = self.any_vm()
        model = self.model.vms[vm]
        operations = ["create"]
        if model.snapshots:
            operations += ["commit", "pull", "auto"] + (["revert"] if not model.running else [])
        operation = self.rng.choice(operations)
        name = self.new_name("s") if operation == "create" else self.rng.choice(sorted(model.snapshots))
        crash_at = self.rng.randint(1, 4)

        def work(app: Appliance, pause: Pause) -> None:
            record, calls = CatalogJournal.record, []

            def record_then_die(journal, tree, intent, also=None) -> None:
                record(journal, tree, intent, also)
                calls.append(intent)
                if len(calls) == crash_at:
                    die()
            CatalogJournal.record = record_then_die
            snapshots = app.snapshots
            run({"create": lambda: snapshots.create(vm, name),
                 "revert": lambda: snapshots.revert(vm, name),
                 "commit": lambda: snapshots.delete(vm, name, via="commit"),
                 "pull": lambda: snapshots.delete(vm, name, via="pull"),
                 "auto": lambda: snapshots.delete(vm, name)}[operation]())
        child = forked(self.app.settings.data_dir, work)
        code = child.wait()
        assert code in (0, DIED, REFUSED), f"{operation} failed: {child.output}"
        what = f"crash {operation} {vm} {name} after catalog step {crash_at}"
        self.recover()
        if code == REFUSED:
            self.refusal(vm, ConflictError(child.output), operation == "commit" and "children" in child.output)
            return f"{what}: {child.output.strip()}"
        names = snapshot_names(self.tree(vm))
        if operation == "create" and name in names:
            model.snapshots[name] = copied(model.current)
        elif operation in ("commit", "pull", "auto") and name not in names:
            del model.snapshots[name]
        elif operation == "revert" and qemu_io_reads(self.active_reads(vm, model.snapshots[name])) == 0:
            model.current = copied(model.snapshots[name])
        else:
            return f"{what}: rolled back" if code == DIED else f"{what}: no change"
        return f"{what}: {'finished' if code == DIED else 'done before'}"

    def crash_backup(self) -> str:
        vm = self.any_vm()
        full = self.rng.random() < 0.25
        options = self.backup_options(vm)
        before = {m.backup_id for m in self.app.store.list_backups(vm)}
        # At the first report (the export is up, nothing read yet) or once something was read.
        mid_copy = self.rng.random() < 0.5

        def work(app: Appliance, pause: Pause) -> None:
            def report(disk: str, done: int, total: int) -> None:
                if done > 0 or not mid_copy:
                    pause(f"{disk} {done}/{total}")
            run(app.backups.create(app.vms.spec(vm), full=full, options=options, progress=report))
        child = forked(self.app.settings.data_dir, work)
        what = f"crash backup {vm}{' ' + options.transport if self.model.vms[vm].running else ''}"
        killed = child.kill_when_paused()
        self.recover()
        if killed:
            new = {m.backup_id for m in self.app.store.list_backups(vm)} - before
            assert not new, f"a killed backup left backups {new}"
            return f"{what}: killed at {child.output.split()[-1]}"
        assert child.code == 0, child.output
        [backup_id] = {m.backup_id for m in self.app.store.list_backups(vm)} - before
        self.took_backup(vm, backup_id, self.app.store.get_backup(backup_id).checkpoint)
        return f"{what}: ended before a progress report, {backup_id}"

    def crash_restore_over(self) -> str:
        vm = self.rng.choice(self.stopped_vms())
        backup_id = self.rng.choice(list(self.model.backups))
        disk = self.rng.choice(sorted(DISKS))

        def work(app: Appliance, pause: Pause) -> None:
            def report(name: str, done: int, total: int) -> None:
                if name == disk:
                    pause(f"{name} {done}/{total}")
            run(app.restores.over_vm(backup_id, vm, progress=report))
        child = forked(self.app.settings.data_dir, work)
        what = f"crash restore {backup_id} over {vm} in {disk}"
        killed = child.kill_when_paused()
        self.recover()
        if killed:
            return f"{what}: killed at {child.output.split()[-1]}"
        if child.code == REFUSED:
            return f"{what}: " + self.refusal(vm, ConflictError(child.output))
        assert child.code == 0, child.output
        self.restored_over(vm, backup_id)
        return f"{what}: ended before a progress report"

    def crash_gc(self) -> str:
        crash_at = self.rng.randint(1, 12)

        def work(app: Appliance, pause: Pause) -> None:
            collect_garbage(Store.open(DyingBackend(app.store.backend, at=crash_at)), grace=timedelta(0))
        child = forked(self.app.settings.data_dir, work)
        code = child.wait()
        assert code in (0, DIED), child.output
        self.recover()
        self.check_store()           # every backup whole after the dead GC ...
        self.gc()                    # ... and after the next one, which finishes its work
        return f"crash gc at store change {crash_at}: {'died' if code == DIED else 'ended first'}"

    # -- checking -----------------------------------------------------------------------------

    def tree(self, vm: str) -> VMTree:
        """Straight from the catalog (SnapshotService.tree() also measures every layer, slow); a
        VM that never had a snapshot operation has no record yet: its tree is its disks."""
        with self.app.catalog() as s:
            rec = s.get(SnapshotTreeRecord, vm)
        if rec is not None:
            return VMTree.from_dict(rec.tree)
        return VMTree.new(vm, {d.name: d.path for d in self.app.vms.spec(vm).disks}, datetime.now(UTC))

    def active_file(self, vm: str, disk: str) -> str:
        return next(d.path for d in self.app.vms.spec(vm).disks if d.name == disk)

    def active_reads(self, vm: str, content: Content, tree: VMTree | None = None) -> list[tuple[str, list[int]]]:
        tree = tree or self.tree(vm)
        return [(tree.active(d).file, slots) for d, slots in content.items()]

    def check(self, everything: bool) -> None:
        """The layers of the VMs the step acted on, and of every VM that may read their files
        (instant clones), hold what the model says; with `everything`, or after a crash, those of
        every VM. Every VM runs or not as the model says and holds exactly its tree's files;
        nothing leaked."""
        reads: list[tuple[str, list[int]]] = []
        read = set(self.model.vms) if everything or self.touched is None else self.readers_too(self.touched)
        for vm, model in self.model.vms.items():
            tree = self.tree(vm)
            assert sorted(snapshot_names(tree)) == sorted(model.snapshots), vm
            if vm in read:
                reads += self.active_reads(vm, model.current, tree)
                for name, content in model.snapshots.items():
                    snap = tree.snapshot(name)
                    reads += [(tree.nodes[snap.nodes[d]].file, slots) for d, slots in content.items()]
            state = self.app.driver.status(vm).state
            assert state == ("running" if model.running else "stopped"), f"{vm} is {state}"
            if model.running and vm in read:
                run(self.flush(vm))
            files, layers = {str(p) for p in (self.app.settings.images_dir / vm).iterdir()}, {n.file for n in tree.nodes.values()}
            assert files == layers, f"{vm}: files left behind or missing"
        if qemu_io_reads(reads) != 0:
            wrong = [f"{file}: expected {slots}" for file, slots in reads if qemu_io_reads([(file, slots)]) != 0]
            raise AssertionError("content differs from the model:\n" + "\n".join(wrong))
        assert {p.name for p in self.app.settings.images_dir.iterdir()} == set(self.model.vms), "VM folders"
        if self.kind.startswith(HELPER_STEPS):
            data_dir = str(self.app.settings.data_dir)
            assert helpers_naming(data_dir) == [], helpers_naming(data_dir)
        assert list(self.temp.iterdir()) == [], "temporary files left"
        assert list(self.app.settings.scratch_dir.iterdir()) == [], "scratch files left"

    def readers_too(self, vms: set[str]) -> set[str]:
        """`vms` and the VMs that may read their files."""
        return vms | {n for n in self.model.vms if any(self.model.may_read(n, vm) for vm in vms)}

    def check_deeply(self) -> None:
        for vm in self.model.vms:
            assert run(self.app.snapshots.check(vm)).problems == [], vm
        assert sorted(m.backup_id for m in self.app.store.list_backups()) == sorted(self.model.backups)

    async def flush(self, vm: str) -> None:
        """Reading a running VM's layers from outside sees what QEMU has written out."""
        async with self.app.driver.session(vm) as s:
            for disk in DISKS:
                await s.qemu_io(await root_node(s, disk), "flush")

    def check_restores(self, backup_id: str, content: Content) -> None:
        for disk, slots in content.items():
            target = self.scratch / f"{backup_id}-{disk}.raw"
            restore_disk(self.app.store, backup_id, disk, target, fmt="raw")
            data = target.read_bytes()
            target.unlink()
            restored = [data[i * SLOT] if data[i * SLOT:(i + 1) * SLOT] == bytes([data[i * SLOT]]) * SLOT else -1
                        for i in range(len(slots))]
            assert restored == slots, f"backup {backup_id} of {disk}: {restored}, expected {slots}"

    def check_store(self) -> None:
        """Every backup of the model restores to its content; the store verifies, and holds no
        backup directory without a manifest once a GC ran."""
        for backup_id, backup in self.model.backups.items():
            self.check_restores(backup_id, backup.content)
        assert verify_store(self.app.store).ok

    def checkpoint_bitmaps(self, vm: str) -> dict[str, list[str]]:
        """Per disk, Cairn's bitmaps on the VM's active layers (QEMU's view when it runs)."""
        if not self.model.vms[vm].running:
            return {d: sorted(b for b in image_bitmaps(self.active_file(vm, d)) if b.startswith("cairn-"))
                    for d in DISKS}

        async def live() -> dict[str, list[str]]:
            async with self.app.driver.session(vm) as s:
                blocks = {disk_of_qdev(b.get("qdev", "")): b for b in await s.execute("query-block")}
            return {d: sorted(m["name"] for m in blocks[d]["inserted"].get("dirty-bitmaps", [])
                              if m.get("name", "").startswith("cairn-")) for d in DISKS}
        return run(live())


@pytest.fixture
def model_appliance(appliance_data_dir: Path, private_tmp: Path):
    """An appliance whose store has 64 KiB blocks in 1 MiB packs (a few MiB of disks span many
    blocks and packs, so prunes leave packs to repack), and a temp directory of its own."""
    Store.init(appliance_data_dir / "store", block_size=64 << 10, pack_size=1 << 20)
    app = Appliance.open(str(appliance_data_dir))
    yield app, private_tmp
    for vm in app.vms.list():
        if vm.status.state in ("running", "paused"):
            run(app.vms.stop(vm.spec.name, timeout=5, force=True))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_step_of_the_data_path_keeps_the_model(model_appliance, tmp_path: Path):
    app, temp = model_appliance
    seed = int(os.environ.get("CAIRN_SEED") or random.SystemRandom().randrange(1 << 32))
    steps = int(os.environ.get("CAIRN_MODEL_STEPS", "1000"))
    print(f"model test: CAIRN_SEED={seed} CAIRN_MODEL_STEPS={steps}")
    app.vms.create(ORIGIN, [n * SLOT for n in DISKS.values()])
    runner = Runner(app, random.Random(seed), tmp_path, temp)
    started = time.monotonic()
    seconds: Counter[str] = Counter()
    for number in range(1, steps + 1):
        try:
            began = time.monotonic()
            runner.log.append(runner.step())
            kind = runner.kind.replace("_", " ") + (" (refused)" if "refused" in runner.log[-1] else "")
            seconds[kind] += time.monotonic() - began
            began = time.monotonic()
            deeply = number % CHECK_EVERY == 0 or number == steps
            runner.check(everything=deeply or number % READ_ALL_EVERY == 0)
            if deeply:
                runner.check_deeply()
            seconds["(checks)"] += time.monotonic() - began
        except Exception as err:
            (tmp_path / "steps.log").write_text("\n".join(runner.log) + "\n")
            raise AssertionError(f"CAIRN_SEED={seed}, at step {number} (all steps in {tmp_path / 'steps.log'}); "
                                 "the last ones:\n"
                                 + "\n".join(runner.log[-15:]) + f"\n{type(err).__name__}: {err}") from err
        runner.counts[kind] += 1
    print(f"model test: {steps} steps in {time.monotonic() - started:.0f} s, CAIRN_SEED={seed}")
    print("steps (seconds):", ", ".join(f"{k} {n} ({seconds[k]:.0f})" for k, n in sorted(runner.counts.items())),
          f"checks ({seconds['(checks)']:.0f});", "incremental backups:", sum(" incremental " in line for line in runner.log))
