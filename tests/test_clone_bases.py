"""Clone bases with real QEMU: while another VM reads a file (an instant clone not yet streamed,
a clone's snapshot layer, a VM on a library image), every operation that would rewrite, resize,
move or remove that file is refused with the remedy, and the reader still opens with the data it
was made with. A snapshot of the source only adds layers, so it is allowed, and lets the source
run again on its new layers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from backup_helpers import MiB, run
from snapshot_helpers import has_pattern, qemu_io_write
from test_vm_lifecycle import wait_for

from appliance.context import Appliance
from appliance.errors import ConflictError
from appliance.vms.readers import ReadingVM, find_readers
from appliance.vms.service import VMOptions
from vmm import create_disk

MARK = (0x3C, 1 * MiB, 1 * MiB)      # the source's data when the clone is made
NEWER = (0x5D, 1 * MiB, 1 * MiB)     # what the source writes afterwards, in its own layers
REMEDY = "wait for its stream to finish"


def source_and_clone(appliance: Appliance, snapshot_first: bool = False) -> str:
    """VM src with MARK (and, if asked, a snapshot `before` taken first), its backup, and an instant
    clone `c` not yet started: c's disk reads src's active layer. Returns the backup's id."""
    appliance.vms.create("src", [8 * MiB])
    qemu_io_write(appliance.vms.spec("src").disks[0].path, *MARK)
    if snapshot_first:
        run(appliance.snapshots.create("src", "before"))
    backup_id = run(appliance.backups.create(appliance.vms.spec("src"))).manifest.backup_id
    appliance.vms.clone("src", ["c"], "instant")
    return backup_id


def clone_is_intact(appliance: Appliance, clone: str = "c") -> bool:
    """The clone's disk opens, whole chain, and reads the source's data from clone time."""
    return has_pattern(appliance.vms.spec(clone).disks[0].path, *MARK)


def refused(action) -> str:
    """Run `action`; it must be refused, naming the clone that reads and the remedy."""
    with pytest.raises(ConflictError) as err:
        action()
    message = str(err.value)
    assert "instant clone c still reads" in message and REMEDY in message and "delete c" in message, message
    return message


def test_restore_over_a_clone_base_is_refused(appliance: Appliance):
    backup_id = source_and_clone(appliance)
    refused(lambda: run(appliance.restores.over_vm(backup_id, "src")))
    assert clone_is_intact(appliance)


@pytest.mark.parametrize("via", ["commit", "pull"])
def test_deleting_a_snapshot_whose_layer_a_clone_reads_is_refused(appliance: Appliance, via: str):
    """The clone reads src's layer L0; a snapshot then freezes L0 and src writes NEWER above it.
    Deleting that snapshot would commit NEWER into L0 under the clone, or pull L0 up and remove it."""
    source_and_clone(appliance)
    run(appliance.snapshots.create("src", "after"))       # allowed: L0 keeps its data
    qemu_io_write(appliance.vms.spec("src").disks[0].path, *NEWER)
    refused(lambda: run(appliance.snapshots.delete("src", "after", via=via)))
    assert clone_is_intact(appliance)
    assert has_pattern(appliance.vms.spec("src").disks[0].path, *NEWER)


def test_reverting_away_from_a_layer_a_clone_reads_is_refused(appliance: Appliance):
    source_and_clone(appliance, snapshot_first=True)     # the clone reads src's active layer
    refused(lambda: run(appliance.snapshots.revert("src", "before")))
    assert clone_is_intact(appliance)


def test_growing_or_starting_a_clone_base_is_refused_until_a_snapshot_gives_it_new_layers(appliance: Appliance):
    source_and_clone(appliance)
    refused(lambda: run(appliance.vms.grow_disk("src", "vda", 16 * MiB)))
    message = refused(lambda: run(appliance.vms.start("src")))
    assert "take a snapshot of src first" in message, message
    # A snapshot freezes the layer the clone reads: src runs and grows on its new layer.
    run(appliance.snapshots.create("src", "for-the-clone"))
    run(appliance.vms.start("src"))
    run(appliance.vms.grow_disk("src", "vda", 16 * MiB))
    run(appliance.vms.stop("src", timeout=5, force=True))
    assert clone_is_intact(appliance)


def test_deleting_a_clone_base_is_refused_with_the_remedy(appliance: Appliance, api_client):
    source_and_clone(appliance)
    refused(lambda: appliance.vms.delete("src"))
    answer = api_client.delete("/api/v1/vms/src")
    assert answer.status_code == 409 and REMEDY in answer.json()["error"]["message"], answer.text
    assert clone_is_intact(appliance)


def test_an_instant_clone_snapshotted_before_its_first_start_keeps_its_tree_across_the_stream(appliance: Appliance):
    """A snapshot of the clone taken before its first start freezes a layer on src's file. The
    stream copies src's data into that layer, the clone's lowest of its own, so every layer of the
    clone stands without src and the tree still matches the disks: snapshot operations go on, and
    src is free. (The stream used to copy into the active layer and drop everything under it, the
    snapshot's layer too: `snapshot check` found the chain broken and every snapshot operation on
    the clone was refused.)"""
    source_and_clone(appliance)
    run(appliance.snapshots.create("c", "early"))
    qemu_io_write(appliance.vms.spec("c").disks[0].path, *NEWER)
    run(appliance.vms.start("c"))
    wait_for(lambda: run(appliance.vms.clone_progress("c")) == {}, what="the clone's stream")
    try:
        assert run(appliance.snapshots.check("c")).problems == []
        run(appliance.snapshots.create("c", "later"))
    finally:
        run(appliance.vms.stop("c", timeout=5, force=True))
    tree = appliance.snapshots.tree("c")
    assert has_pattern(tree.nodes[tree.snapshot("early").nodes["vda"]].file, *MARK)
    assert has_pattern(appliance.vms.spec("c").disks[0].path, *NEWER)
    assert appliance.vms.readers([d.path for d in appliance.vms.spec("src").disks], besides="src") == []
    appliance.vms.delete("src")
    run(appliance.snapshots.revert("c", "early"))
    assert clone_is_intact(appliance)


def test_a_library_image_read_by_a_vm_and_its_clone_stays(appliance: Appliance, tmp_path):
    appliance.vms.create("maker", [8 * MiB])
    qemu_io_write(appliance.vms.spec("maker").disks[0].path, *MARK)
    appliance.vms.image_from_vm("maker", "base")
    appliance.vms.delete("maker")
    appliance.vms.create("onimg", [], options=VMOptions(image="base"))
    appliance.vms.clone("onimg", ["c"], "instant")
    with pytest.raises(ConflictError, match="image base is in use by VMs c, onimg"):
        appliance.vms.delete_image("base")
    assert clone_is_intact(appliance)


def test_a_chain_broken_further_down_still_reads_the_files_above_the_break(tmp_path):
    gone, middle, top = (str(tmp_path / f"{name}.qcow2") for name in ("gone", "middle", "top"))
    create_disk(gone, MiB)
    create_disk(middle, None, backing=gone)
    create_disk(top, None, backing=middle)
    Path(gone).unlink()
    readers = find_readers([middle], [ReadingVM("x", [("vda", top)])])
    assert [(r.vm, r.disk, r.file) for r in readers] == [("x", "vda", os.path.realpath(middle))]
