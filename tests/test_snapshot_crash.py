"""Crash safety of snapshot operations on real QEMU: QEMU SIGKILLed, or the appliance process
killed, in the middle of a block-commit or block-stream (paused there by the test, so the kill
lands mid-copy every time), or after any step of an operation. The intent record makes the next
operation finish or roll back what was begun, the tree then matches the disks, every byte the
guest wrote is still there, and the next backup is of the kind the checkpoint ledger implies and
restores to the disks byte for byte."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import pytest
from backup_helpers import MiB, root_node, run
from restore_helpers import same_image
from snapshot_helpers import block_jobs_paused_midway, has_pattern, qemu_io_write

from appliance.context import Appliance
from appliance.errors import ConflictError
from appliance.snapshots.service import CatalogJournal
from restore import restore_disk

BASE = (0xA1, 0, 16 * MiB)         # vda, before the snapshot: what a pull moves up
# vda, after it: what a commit moves down. The mirror job behind an active commit copies its
# first 16 MiB at once (its buffer) before the rate limit applies, so more than that.
TOP = (0xB2, 16 * MiB, 40 * MiB)
SMALL = (0xC3, 0, 1 * MiB)         # vdb, after the snapshot
RATE = 4 * MiB                     # bytes per second: a merge of vda takes seconds


def prepare(appliance: Appliance, vm: str) -> None:
    """A running VM (no guest OS needed for block jobs) with data below and above snapshot s1."""
    appliance.vms.create(vm, [64 * MiB, 16 * MiB])
    run(appliance.vms.start(vm))
    run(write_flushed(appliance, vm, "vda", *BASE))
    run(appliance.backups.create(appliance.vms.spec(vm)))     # checkpoint bitmaps for the layers to carry
    run(appliance.snapshots.create(vm, "s1"))
    run(write_flushed(appliance, vm, "vda", *TOP))
    run(write_flushed(appliance, vm, "vdb", *SMALL))


async def write_flushed(appliance: Appliance, vm: str, disk: str, pattern: int, offset: int, length: int) -> None:
    """Write and flush, as a guest does before it counts data as safe: qcow2 metadata that
    only QEMU's memory holds is lost with a SIGKILLed QEMU."""
    async with appliance.driver.session(vm) as s:
        node = await root_node(s, disk)
        await s.qemu_io(node, f"write -P {pattern:#x} {offset} {length}")
        await s.qemu_io(node, "flush")


def assert_paused_mid_copy(job: dict) -> None:
    assert job["status"] == "paused" and 0 < job["current-progress"] < job["total-progress"], job


def assert_consistent_and_complete(appliance: Appliance, vm: str, tmp_path: Path, qemu_died: bool) -> None:
    """`qemu_died`: QEMU was SIGKILLed, so the checkpoint bitmaps it held were never written back
    whole (they are marked in use in the images): the next backup reads every disk in full and
    says so. Otherwise QEMU carried them through the merge and the next backup is incremental."""
    result = run(appliance.snapshots.check(vm))
    assert result.problems == [], result
    tree = appliance.snapshots.tree(vm)
    assert tree.snapshots == {} and appliance.snapshots.interrupted(vm) is None
    run(appliance.vms.stop(vm, timeout=5, force=True))
    vda, vdb = (d.path for d in appliance.vms.spec(vm).disks)
    assert [n.file for n in tree.active_chain("vda")] == [vda]
    assert has_pattern(vda, *BASE) and has_pattern(vda, *TOP)
    assert has_pattern(vdb, *SMALL)
    files = {str(p) for p in Path(vda).parent.iterdir()}
    assert files == {n.file for n in tree.nodes.values()}, "files left behind or missing"
    after = run(appliance.backups.create(appliance.vms.spec(vm))).manifest
    if qemu_died:
        assert after.kind == "full", after
        for disk in ("vda", "vdb"):
            assert any(n.startswith(f"{disk}:") and "full read" in n for n in after.notes), after.notes
    else:
        assert after.kind == "incremental" and not after.notes, after
    for disk in appliance.vms.spec(vm).disks:
        out = tmp_path / f"{after.backup_id}-{disk.name}.raw"
        restore_disk(appliance.store, after.backup_id, disk.name, out)
        assert same_image(disk.path, out), disk


@pytest.mark.parametrize(("via", "recover_while"), [("commit", "stopped"), ("commit", "running"),
                                                    ("pull", "stopped"), ("pull", "running")])
def test_qemu_killed_during_a_merge(appliance: Appliance, tmp_path: Path, via: str, recover_while: str):
    prepare(appliance, "crash")
    failed: list[BaseException] = []
    paused: queue.Queue[dict] = queue.Queue()

    def delete() -> None:
        try:
            run(appliance.snapshots.delete("crash", "s1", via=via, rate_limit=RATE))
        except BaseException as err:
            failed.append(err)
    with block_jobs_paused_midway(paused.put):
        worker = threading.Thread(target=delete)
        worker.start()
        assert_paused_mid_copy(paused.get(timeout=120))
        os.kill(appliance.driver.status("crash").pid, signal.SIGKILL)
        worker.join(60)
    assert failed, "the delete survived QEMU's death"
    assert appliance.snapshots.interrupted("crash").op == "delete"

    if recover_while == "stopped":
        notes = run(appliance.snapshots.check("crash")).recovered     # qemu-img merges the rest
        run(appliance.vms.start("crash"))
    else:
        run(appliance.vms.start("crash"))                              # QEMU opens the old chain
        notes = run(appliance.snapshots.check("crash")).recovered     # a new live job
    assert any("finished deleting" in n for n in notes), notes
    assert_consistent_and_complete(appliance, "crash", tmp_path, qemu_died=True)


# The appliance process: deletes s1 by a commit that the pause point holds mid-copy, says so, and
# waits there until it is killed.
DELETE_UNTIL_KILLED = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from snapshot_helpers import block_jobs_paused_midway
from appliance.context import Appliance
data_dir, vm, rate = sys.argv[2:]
with block_jobs_paused_midway(lambda job: print(json.dumps(job), flush=True)):
    asyncio.run(Appliance.open(data_dir).snapshots.delete(vm, "s1", via="commit", rate_limit=int(rate)))
"""


def test_appliance_killed_during_a_commit(appliance: Appliance, appliance_data_dir: Path, tmp_path: Path):
    prepare(appliance, "orphan")
    cli = subprocess.Popen([sys.executable, "-c", DELETE_UNTIL_KILLED, str(Path(__file__).parent),
                            str(appliance_data_dir), "orphan", str(RATE)], stdout=subprocess.PIPE, text=True)
    try:
        assert_paused_mid_copy(json.loads(cli.stdout.readline()))
    finally:
        cli.kill()
        cli.wait()
    assert appliance.snapshots.interrupted("orphan").op == "delete"
    # QEMU still has the orphaned job; the next operation cancels it and commits again.
    notes = run(appliance.snapshots.check("orphan")).recovered
    assert any("cancelled the block jobs cairn-commit-vda" in n for n in notes), notes
    assert run(appliance.driver.run_state("orphan")) == "running"
    assert_consistent_and_complete(appliance, "orphan", tmp_path, qemu_died=False)


def crash_after_step(data_dir: Path, op: str, vm: str, crash_at: int) -> int:
    """Run one snapshot operation in a forked appliance process that dies (os._exit: no
    cleanup runs) right after its catalog transaction number `crash_at`; its exit code, 17
    for that death, 0 if the operation ended first."""
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    try:
        record, calls = CatalogJournal.record, []

        def record_then_die(self, tree, intent) -> None:
            record(self, tree, intent)
            calls.append(1)
            if len(calls) == crash_at:
                os._exit(17)
        CatalogJournal.record = record_then_die
        snapshots = Appliance.open(str(data_dir)).snapshots
        run({"create": lambda: snapshots.create(vm, "new"),
             "revert": lambda: snapshots.revert(vm, "s1"),
             "commit": lambda: snapshots.delete(vm, "s2", via="commit"),
             "pull": lambda: snapshots.delete(vm, "s1", via="pull")}[op]())
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


A, B, C = (0x11, 0, 128 << 10), (0x22, 128 << 10, 128 << 10), (0x33, 256 << 10, 128 << 10)


@pytest.mark.parametrize(("op", "running"), [("create", False), ("revert", False), ("commit", False),
                                             ("pull", False), ("create", True), ("commit", True), ("pull", True)])
def test_a_crash_after_any_step_is_finished_or_rolled_back(appliance: Appliance, appliance_data_dir: Path, op: str,
                                                           running: bool):
    for crash_at in range(1, 10):
        vm = f"{op}{crash_at}"
        appliance.vms.create(vm, [1 * MiB, 1 * MiB])
        for pattern in (A, B, C):
            if pattern is not A:
                run(appliance.snapshots.create(vm, "s1" if pattern is B else "s2"))
            for disk in appliance.vms.spec(vm).disks:
                qemu_io_write(disk.path, *pattern)
        if running:
            run(appliance.vms.start(vm))
        code = crash_after_step(appliance_data_dir, op, vm, crash_at)
        assert code in (0, 17), code
        result = run(appliance.snapshots.check(vm))
        assert result.problems == [] and appliance.snapshots.interrupted(vm) is None, result
        if running:
            assert run(appliance.driver.run_state(vm)) == "running"
            run(appliance.vms.stop(vm, timeout=5, force=True))
        assert_points_kept(appliance, vm, op)
        if code == 0:
            return                          # the operation ran to its end before this step
    raise AssertionError(f"{op} recorded more steps than expected")


def assert_points_kept(appliance: Appliance, vm: str, op: str) -> None:
    tree = appliance.snapshots.tree(vm)
    names = {s.name for s in tree.snapshots.values()}
    expected = {"s1": [A], "s2": [A, B], "new": [A, B, C]}
    now = [A] if op == "revert" and tree.current_parent().name == "s1" else [A, B, C]
    assert names == {"create": {"s1", "s2"} | (names & {"new"}), "revert": {"s1", "s2"}, "commit": {"s1"},
                     "pull": {"s2"}}[op], names
    for disk in tree.disks():
        points = [(tree.active(disk).file, now)]
        points += [(tree.nodes[s.nodes[disk]].file, expected[s.name]) for s in tree.snapshots.values()]
        for file, patterns in points:
            assert all(has_pattern(file, *p) for p in patterns), (file, patterns)
    files = {str(p) for p in Path(tree.active("vda").file).parent.iterdir()}
    assert files == {n.file for n in tree.nodes.values()}, "files left behind or missing"


def test_an_interrupted_delete_that_cannot_be_finished_waits_for_repair(appliance: Appliance, appliance_data_dir: Path):
    appliance.vms.create("stuck", [1 * MiB])
    run(appliance.snapshots.create("stuck", "s1"))
    run(appliance.snapshots.create("stuck", "s2"))
    run(appliance.snapshots.revert("stuck", "s1"))          # s2's layer is now an old branch on s1's
    tree = appliance.snapshots.tree("stuck")
    assert crash_after_step(appliance_data_dir, "pull", "stuck", 1) == 17      # intent written, nothing merged
    Path(tree.nodes[tree.snapshot("s2").nodes["vda"]].file).unlink()           # and a child lost by hand

    with pytest.raises(ConflictError, match="interrupted delete of snapshot .* could not be finished"):
        run(appliance.snapshots.check("stuck"))
    with pytest.raises(ConflictError, match="could not be finished"):
        run(appliance.snapshots.create("stuck", "s3"))
    repaired = run(appliance.snapshots.check("stuck", fix=True))
    assert repaired.recovered[0].startswith("gave up") and repaired.repaired, repaired
    assert run(appliance.snapshots.check("stuck")).problems == []
    run(appliance.snapshots.create("stuck", "s3"))
