"""Model-based random test of snapshot trees on real QEMU.

Random operations (writes of known patterns, snapshots live and offline, reverts, deletes via
commit, pull or the automatic choice, VM stop and start, backups restored and compared) run against a VM with two small disks
and against a shadow model: each disk is a row of 64 KiB slots, each slot holds the pattern
byte last written there. After every operation the content of every snapshot's layers and of
the active layers is compared with the model, in one qemu-io process.

The seed is printed; CAIRN_SEED=<seed> replays a run, CAIRN_RANDOM_OPS sets its length. The VM
runs no guest OS: writes go through QEMU's block layer with HMP qemu-io, which is the path a
guest's writes take below the virtio device, and much faster than a TCG guest.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from backup_helpers import root_node, run

from appliance.context import Appliance
from appliance.errors import ConflictError
from appliance.snapshots.records import SnapshotTreeRecord
from chain import VMTree
from restore import restore_disk

SLOT = 64 << 10
SLOTS = {"vda": 32, "vdb": 16}          # 2 MiB and 1 MiB
VM = "rnd"


@dataclass
class Shadow:
    """What each disk must hold now, and what each snapshot must hold, slot by slot."""
    current: dict[str, list[int]] = field(default_factory=lambda: {d: [0] * n for d, n in SLOTS.items()})
    snapshots: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    running: bool = False
    taken: int = 0


class Runner:
    def __init__(self, appliance: Appliance, rng: random.Random, scratch: Path):
        self.app = appliance
        self.scratch = scratch
        self.rng = rng
        self.shadow = Shadow()
        self.log: list[str] = []

    # -- operations ---------------------------------------------------------------------------

    def write(self) -> str:
        disk = self.rng.choice(sorted(SLOTS))
        first = self.rng.randrange(SLOTS[disk])
        count = min(self.rng.randint(1, 4), SLOTS[disk] - first)
        pattern = self.rng.randint(1, 255)
        command = f"write -P {pattern:#x} {first * SLOT} {count * SLOT}"
        if self.shadow.running:
            async def through_qemu() -> None:
                async with self.app.driver.session(VM) as s:
                    await s.qemu_io(await root_node(s, disk), command)
            run(through_qemu())
        else:
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, self.active_file(disk)], check=True,
                           capture_output=True)
        self.shadow.current[disk][first:first + count] = [pattern] * count
        return f"write {disk} {command}"

    def snapshot(self) -> str:
        self.shadow.taken += 1
        name = f"s{self.shadow.taken}"
        run(self.app.snapshots.create(VM, name))
        self.shadow.snapshots[name] = {d: list(c) for d, c in self.shadow.current.items()}
        return f"snapshot {name} ({'live' if self.shadow.running else 'offline'})"

    def revert(self) -> str:
        name = self.rng.choice(sorted(self.shadow.snapshots))
        run(self.app.snapshots.revert(VM, name))
        self.shadow.current = {d: list(c) for d, c in self.shadow.snapshots[name].items()}
        return f"revert {name}"

    def delete(self) -> str:
        name = self.rng.choice(sorted(self.shadow.snapshots))
        via = self.rng.choice(["commit", "pull", None])
        try:
            merges = run(self.app.snapshots.delete(VM, name, via=via))
        except ConflictError as err:
            # Only a layer with branches refuses a commit; the check below proves nothing changed.
            assert via == "commit" and "children" in str(err), err
            return f"delete {name} via commit: refused (branches)"
        del self.shadow.snapshots[name]
        return f"delete {name} via {via}: {', '.join(f'{m.disk} {m.kind}' for m in merges)}"

    def backup(self) -> str:
        """An incremental backup must see every write since the last one, whatever snapshot
        operations moved the checkpoint bitmaps meanwhile: it restores to the model's content."""
        manifest = run(self.app.backups.create(self.app.vms.spec(VM))).manifest
        for disk, slots in self.shadow.current.items():
            target = self.scratch / f"{manifest.backup_id}-{disk}.raw"
            restore_disk(self.app.store, manifest.backup_id, disk, target, fmt="raw")
            data = target.read_bytes()
            target.unlink()
            restored = [data[i * SLOT] if data[i * SLOT:(i + 1) * SLOT] == bytes([data[i * SLOT]]) * SLOT else -1
                        for i in range(len(slots))]
            assert restored == slots, f"backup {manifest.backup_id} ({manifest.kind}) of {disk}: {restored}"
        return f"backup {manifest.kind} {manifest.backup_id} {' '.join(manifest.notes)}"

    def start_or_stop(self) -> str:
        if self.shadow.running:
            run(self.app.vms.stop(VM, timeout=5, force=True))
        else:
            run(self.app.vms.start(VM))
        self.shadow.running = not self.shadow.running
        return "start" if self.shadow.running else "stop"

    def step(self) -> str:
        choices = [(self.write, 5), (self.snapshot, 2), (self.start_or_stop, 1), (self.backup, 1)]
        if self.shadow.snapshots:
            # Deletes catch up with snapshots as the tree grows, so it stays small.
            choices.append((self.delete, 1 + len(self.shadow.snapshots) // 2))
            if not self.shadow.running:
                choices.append((self.revert, 2))
        operations, weights = zip(*choices, strict=True)
        return self.rng.choices(operations, weights)[0]()

    # -- checking -----------------------------------------------------------------------------

    def tree(self) -> VMTree:
        """Straight from the catalog: SnapshotService.tree() also measures every layer (slow)."""
        with self.app.catalog() as s:
            rec = s.get(SnapshotTreeRecord, VM)
        return VMTree.from_dict(rec.tree) if rec else self.app.snapshots.tree(VM)

    def active_file(self, disk: str) -> str:
        return next(d.path for d in self.app.vms.spec(VM).disks if d.name == disk)

    def check_content(self) -> None:
        tree = self.tree()
        assert sorted(s.name for s in tree.snapshots.values()) == sorted(self.shadow.snapshots)
        expected = [(tree.active(d).file, c) for d, c in self.shadow.current.items()]
        for name, content in self.shadow.snapshots.items():
            snap = tree.snapshot(name)
            expected += [(tree.nodes[snap.nodes[d]].file, c) for d, c in content.items()]
        if self.shadow.running:
            run(self.flush())
        if qemu_io_reads(expected) != 0:
            wrong = [f"{file}: expected {slots}" for file, slots in expected if qemu_io_reads([(file, slots)]) != 0]
            raise AssertionError("content differs from the model:\n" + "\n".join(wrong))

    async def flush(self) -> None:
        """Reading a running VM's layers from outside sees what QEMU has written out."""
        async with self.app.driver.session(VM) as s:
            for disk in SLOTS:
                await s.qemu_io(await root_node(s, disk), "flush")


def qemu_io_reads(expected: list[tuple[str, list[int]]]) -> int:
    """Verify each file's slots in one qemu-io process; the number of reads that did not verify.

    qemu-io goes on after a command fails: a file that is missing or does not open (a layer of
    its chain gone) gets "no file open" for each of its reads, on stderr, while the other files
    verify. So every read must be confirmed: each prints "read N/N bytes" on success, and that
    line follows a "Pattern verification failed" when the content is wrong."""
    commands, reads = [], 0
    for file, slots in expected:
        commands += ["-c", f"open -r -U {file}"]
        start = 0
        for i in range(1, len(slots) + 1):
            if i == len(slots) or slots[i] != slots[start]:
                commands += ["-c", f"read -P {slots[start]:#x} {start * SLOT} {(i - start) * SLOT}"]
                reads += 1
                start = i
        commands += ["-c", "close"]
    done = subprocess.run(["qemu-io", *commands], check=False, capture_output=True, text=True)
    confirmed = len(re.findall(r"^read (\d+)/\1 bytes at offset", done.stdout, re.MULTILINE))
    return reads - confirmed + done.stdout.count("Pattern verification failed")


def test_the_checker_fails_on_a_missing_or_unreadable_layer(tmp_path: Path):
    """A read of a layer that is gone, or whose backing layer is gone, is a failure of the check,
    whichever other files verify in the same qemu-io run."""
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(4 * SLOT)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x11 0 {4 * SLOT}", base], check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top], check=True)
    good = [(base, [0x11] * 4), (top, [0x11] * 4)]
    assert qemu_io_reads(good) == 0
    assert qemu_io_reads([(base, [0x22] * 4)]) > 0                           # wrong content
    assert qemu_io_reads([*good, (str(tmp_path / "gone.qcow2"), [0x11] * 4)]) > 0  # a missing layer
    blank = str(tmp_path / "blank.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", blank, str(4 * SLOT)], check=True)
    Path(base).unlink()                                                       # a deleted layer under top
    assert qemu_io_reads([(blank, [0] * 4), (top, [0x11] * 4)]) > 0


@pytest.mark.slow
def test_random_snapshot_operations_keep_every_point(appliance: Appliance, tmp_path: Path):
    seed = int(os.environ.get("CAIRN_SEED") or random.SystemRandom().randrange(1 << 32))
    operations = int(os.environ.get("CAIRN_RANDOM_OPS", "200"))
    print(f"snapshot random test: CAIRN_SEED={seed} CAIRN_RANDOM_OPS={operations}")
    appliance.vms.create(VM, [n * SLOT for n in SLOTS.values()])
    runner = Runner(appliance, random.Random(seed), tmp_path)
    try:
        for number in range(1, operations + 1):
            runner.log.append(runner.step())
            try:
                runner.check_content()
                if number % 10 == 0 or number == operations:
                    assert run(appliance.snapshots.check(VM)).problems == []
            except AssertionError as err:
                raise AssertionError(f"CAIRN_SEED={seed}, after operation {number}; the last ones:\n"
                                     + "\n".join(runner.log[-15:]) + f"\n{err}") from None
    finally:
        run(appliance.vms.stop(VM, timeout=5, force=True))
    kinds = " ".join(entry.split(" ")[0] for entry in runner.log)
    print("operations:", {k: kinds.split().count(k) for k in sorted(set(kinds.split()))},
          "incremental backups:", sum(entry.startswith("backup incremental") for entry in runner.log))
