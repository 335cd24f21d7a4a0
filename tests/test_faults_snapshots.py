"""Snapshot operations of a running VM whose Cairn process dies between two of their steps:
recovery leaves QEMU as if the operation had run through, so the next live operation works.
(test_snapshot_crash.py proves every step finished or rolled back on the disks and the tree.)"""
from __future__ import annotations

import pytest
from backup_helpers import MiB, run
from fault_helpers import DIED, Pause, die, forked
from snapshot_helpers import has_pattern, qemu_io_write

from appliance.context import Appliance
from appliance.snapshots.service import CatalogJournal

A, B = (0x11, 0, 256 << 10), (0x22, 256 << 10, 256 << 10)


def dying_after_catalog_step(step: int, operation):
    """Work for a forked Cairn process: `operation(app)`, dying right after its catalog
    transaction number `step` (os._exit: nothing else runs)."""
    def work(app: Appliance, pause: Pause) -> None:
        record, calls = CatalogJournal.record, []

        def record_then_die(journal, tree, intent, also=None) -> None:
            record(journal, tree, intent, also)
            calls.append(intent)
            if len(calls) == step:
                die()
        CatalogJournal.record = record_then_die
        run(operation(app))
    return work


async def open_files(appliance: Appliance, vm: str) -> set[str]:
    async with appliance.driver.session(vm) as s:
        return {n["file"] for n in await s.execute("query-named-block-nodes", {"flat": True})}


@pytest.mark.parametrize("via", ["commit", "pull"])
def test_a_live_delete_killed_after_its_first_merge_leaves_no_layer_open_in_qemu(appliance: Appliance,
                                                                                  appliance_data_dir, via: str):
    """The process dies once the first disk's merge is recorded, before it closes the merged
    layer in QEMU. Recovery finishes the delete and closes it: the next live snapshot works.
    (The layer stayed open in QEMU, its file deleted, and every later live snapshot of the VM
    failed with "node is used as backing hd" until QEMU restarted.)"""
    appliance.vms.create("busy", [1 * MiB, 1 * MiB])
    for disk in appliance.vms.spec("busy").disks:
        qemu_io_write(disk.path, *A)
    run(appliance.vms.start("busy"))
    try:
        run(appliance.snapshots.create("busy", "s1"))
        tree = appliance.snapshots.tree("busy")
        merged = {tree.active(d).file if via == "commit" else tree.nodes[tree.snapshot("s1").nodes[d]].file
                  for d in tree.disks()}
        child = forked(appliance_data_dir, dying_after_catalog_step(
            2, lambda app: app.snapshots.delete("busy", "s1", via=via)))
        assert child.wait() == DIED, child.output

        assert any("finished deleting" in n for n in run(appliance.snapshots.check("busy")).recovered)
        assert merged.isdisjoint(run(open_files(appliance, "busy")))
        run(appliance.snapshots.create("busy", "s2"))
        for disk in appliance.vms.spec("busy").disks:
            async def write(disk: str = disk.name) -> None:
                async with appliance.driver.session("busy") as s:
                    node = next(b["inserted"]["node-name"] for b in await s.execute("query-block")
                                if disk in b.get("qdev", ""))
                    await s.qemu_io(node, f"write -P {B[0]:#x} {B[1]} {B[2]}")
                    await s.qemu_io(node, "flush")
            run(write())
        assert run(appliance.snapshots.check("busy")).problems == []
    finally:
        run(appliance.vms.stop("busy", timeout=5, force=True))
    tree = appliance.snapshots.tree("busy")
    for disk in tree.disks():
        s2 = tree.nodes[tree.snapshot("s2").nodes[disk]].file
        assert has_pattern(s2, *A) and not has_pattern(s2, *B)
        assert has_pattern(tree.active(disk).file, *A) and has_pattern(tree.active(disk).file, *B)
