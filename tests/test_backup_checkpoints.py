"""The checkpoint ledger: every incremental starts from a bitmap the catalog and QEMU agree on.

Each case ends in a backup that restores byte-exact, incremental where the bitmap is still
trustworthy, full (for that disk only) otherwise, with the reason recorded on the backup.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from backup_helpers import (
    CHUNK,
    MiB,
    add_disk,
    boot_guest_vm,
    image_bitmaps,
    image_to_raw,
    paused_backup_with_reference,
    root_node,
    run,
    same_content,
    wait_serial,
    write_pattern,
)
from sqlalchemy import select

from appliance.backups.checkpoints import plan_bases
from appliance.backups.options import BackupOptions
from appliance.backups.records import CheckpointRecord
from appliance.context import Appliance
from appliance.vms.records import VMRecord
from restore import restore_disk
from transports.points import Checkpoint, chain_problem


def qemu_io(image: str, pattern: int, offset: int, length: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", image],
                   check=True, capture_output=True)


def restores_exactly(appliance: Appliance, backup_id: str, disk: str, reference: Path, tmp_path: Path) -> bool:
    out = tmp_path / f"{backup_id}-{disk}.out.raw"
    restore_disk(appliance.store, backup_id, disk, out)
    return same_content(reference, out)


def ledger(appliance: Appliance, vm: str) -> list[CheckpointRecord]:
    with appliance.catalog() as s:
        return list(s.scalars(select(CheckpointRecord).where(CheckpointRecord.vm_name == vm)
                              .order_by(CheckpointRecord.id)))


def stopped_vm(appliance: Appliance, name: str, sizes: list[int]) -> list[str]:
    appliance.vms.create(name, sizes)
    return [d.path for d in appliance.vms.spec(name).disks]


def test_stop_and_start_keep_the_next_incremental_small_and_exact(appliance: Appliance, guest_kernel,
                                                                  tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "web", [128 * MiB])
    try:
        first = run(appliance.backups.create(appliance.vms.spec("web"))).manifest
        (row,) = ledger(appliance, "web")
        assert (row.disk, row.bitmap, row.backup_id, row.state, row.node) == \
            ("vda", first.checkpoint, first.backup_id, "current", "vda")
        assert row.image_file == appliance.vms.spec("web").disks[0].path

        run(appliance.vms.stop("web", timeout=5, force=True))     # QMP quit: the bitmap is stored in the image
        assert image_bitmaps(row.image_file) == [first.checkpoint]
        run(appliance.vms.start("web"))
        wait_serial(appliance, "web", "CAIRN: READY")
        run(write_pattern(appliance, "web", "vda", 0x5C, 60 * MiB, 256 << 10))
        refdir = tmp_path / "ref"
        refdir.mkdir()
        after = run(paused_backup_with_reference(appliance, "web", ["vda"], refdir))

        assert after.kind == "incremental" and after.parent == first.backup_id and not after.notes, after.notes
        # The guest rewrote its boot pattern (chunks 0 and 25) on the way up; plus the one write.
        assert after.disks[0].stats.bytes_read <= 3 * CHUNK, after.disks[0].stats
        assert restores_exactly(appliance, after.backup_id, "vda", refdir / "vda.raw", tmp_path)
        states = [(r.backup_id, r.state, r.incrementals) for r in ledger(appliance, "web")]
        assert states == [(first.backup_id, "retired", 0), (after.backup_id, "current", 1)]
    finally:
        run(appliance.vms.stop("web", timeout=5, force=True))


def test_a_bitmap_removed_by_hand_costs_a_full_read_of_that_disk_only(appliance: Appliance, guest_kernel,
                                                                      tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "two", [128 * MiB, 32 * MiB])
    try:
        first = run(appliance.backups.create(appliance.vms.spec("two"))).manifest

        async def remove_vdb_bitmap() -> None:
            async with appliance.driver.session("two") as s:
                await s.execute("block-dirty-bitmap-remove", {"node": await root_node(s, "vdb"),
                                                               "name": first.checkpoint})
        run(remove_vdb_bitmap())
        run(write_pattern(appliance, "two", "vda", 0x31, 8 * MiB, 64 << 10))
        run(write_pattern(appliance, "two", "vdb", 0x32, 9 * MiB, 64 << 10))
        refdir = tmp_path / "ref"
        refdir.mkdir()
        after = run(paused_backup_with_reference(appliance, "two", ["vda", "vdb"], refdir))

        assert after.kind == "incremental"
        vda, vdb = after.disk("vda"), after.disk("vdb")
        assert vda.stats.bytes_changed <= 64 << 10 and vda.stats.bytes_inherited > 0, vda.stats
        assert (vdb.stats.bytes_changed, vdb.stats.bytes_inherited) == (vdb.size, 0), vdb.stats
        assert [n for n in after.notes if n.startswith("vdb:") and "missing" in n and "full read" in n], after.notes
        assert not [n for n in after.notes if n.startswith("vda:")], after.notes
        for disk in ("vda", "vdb"):
            assert restores_exactly(appliance, after.backup_id, disk, refdir / f"{disk}.raw", tmp_path)
    finally:
        run(appliance.vms.stop("two", timeout=5, force=True))


def test_a_new_disk_is_read_in_full_and_the_others_stay_incremental(appliance: Appliance, tmp_path: Path):
    (vda,) = stopped_vm(appliance, "grow", [32 * MiB])
    qemu_io(vda, 0x11, 0, 64 << 10)
    first = run(appliance.backups.create(appliance.vms.spec("grow"))).manifest
    vdb = add_disk(appliance, "grow", 16 * MiB)
    qemu_io(vda, 0x12, 20 * MiB, 64 << 10)
    qemu_io(vdb, 0x13, 5 * MiB, 64 << 10)

    after = run(appliance.backups.create(appliance.vms.spec("grow"))).manifest
    assert after.kind == "incremental" and after.parent == first.backup_id
    assert after.disk("vda").stats.bytes_read <= CHUNK
    assert after.notes == (f"vdb: new disk since backup {first.backup_id}; full read",)
    for disk, image in (("vda", vda), ("vdb", vdb)):
        assert restores_exactly(appliance, after.backup_id, disk, image_to_raw(image, tmp_path / f"{disk}.raw"),
                                tmp_path)
    assert {r.disk for r in ledger(appliance, "grow") if r.state == "current"} == {"vda", "vdb"}


def test_a_disk_added_to_a_running_vm_across_a_restart(appliance: Appliance, guest_kernel, tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "more", [128 * MiB])
    try:
        first = run(appliance.backups.create(appliance.vms.spec("more"))).manifest
        run(appliance.vms.stop("more", timeout=5, force=True))
        add_disk(appliance, "more", 32 * MiB)
        run(appliance.vms.start("more"))
        wait_serial(appliance, "more", "CAIRN: READY")
        run(write_pattern(appliance, "more", "vdb", 0x71, 3 * MiB, 64 << 10))
        refdir = tmp_path / "ref"
        refdir.mkdir()
        after = run(paused_backup_with_reference(appliance, "more", ["vda", "vdb"], refdir))

        assert after.kind == "incremental" and after.parent == first.backup_id
        assert after.notes == (f"vdb: new disk since backup {first.backup_id}; full read",)
        assert after.disk("vda").stats.bytes_read <= 2 * CHUNK     # the boot pattern, rewritten
        for disk in ("vda", "vdb"):
            assert restores_exactly(appliance, after.backup_id, disk, refdir / f"{disk}.raw", tmp_path)
    finally:
        run(appliance.vms.stop("more", timeout=5, force=True))


def test_every_nth_incremental_is_followed_by_a_full_re_read(appliance: Appliance, tmp_path: Path):
    (vda,) = stopped_vm(appliance, "cycle", [16 * MiB])
    every_two = BackupOptions(full_every=2)
    kinds, notes = [], []
    for n in range(5):
        qemu_io(vda, 0x40 + n, n * MiB, 4096)
        m = run(appliance.backups.create(appliance.vms.spec("cycle"), options=every_two)).manifest
        kinds.append(m.kind)
        notes.append(m.notes)
        assert restores_exactly(appliance, m.backup_id, "vda", image_to_raw(vda, tmp_path / f"{n}.raw"), tmp_path)
    assert kinds == ["full", "incremental", "incremental", "full", "incremental"]
    assert notes[3] == ("vda: 2 incrementals since its last full read; full re-read (every 2)",)
    assert [n for i, n in enumerate(notes) if i != 3] == [()] * 4
    assert [r.incrementals for r in ledger(appliance, "cycle")] == [0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="full_every"):
        BackupOptions(full_every=-1)


def test_orphan_bitmaps_are_removed(appliance: Appliance, tmp_path: Path):
    (vda,) = stopped_vm(appliance, "tidy", [16 * MiB])
    first = run(appliance.backups.create(appliance.vms.spec("tidy"))).manifest
    subprocess.run(["qemu-img", "bitmap", "--add", vda, "cairn-20200101T000000Z-dead"], check=True)
    subprocess.run(["qemu-img", "bitmap", "--add", vda, "not-ours"], check=True)
    qemu_io(vda, 0x21, 3 * MiB, 4096)

    after = run(appliance.backups.create(appliance.vms.spec("tidy"))).manifest
    # Merging the orphan into the base can only make the read larger, never miss a write.
    assert after.kind == "incremental"
    assert any("cairn-20200101T000000Z-dead" in n for n in after.notes), after.notes
    assert sorted(image_bitmaps(vda)) == sorted([after.checkpoint, "not-ours"])
    assert first.checkpoint not in image_bitmaps(vda)
    assert restores_exactly(appliance, after.backup_id, "vda", image_to_raw(vda, tmp_path / "ref.raw"), tmp_path)


def test_a_disk_swapped_for_an_older_copy_of_its_image_is_read_in_full(appliance: Appliance, tmp_path: Path):
    """The copy carries a bitmap of the right name, but the writes made to the original after
    the copy are in neither: only the ledger's record of the image tells them apart."""
    (vda,) = stopped_vm(appliance, "swap", [16 * MiB])
    run(appliance.backups.create(appliance.vms.spec("swap")))
    copy = str(Path(vda).with_name("vda-copy.qcow2"))
    shutil.copyfile(vda, copy)
    qemu_io(copy, 0x61, 7 * MiB, 4096)
    with appliance.catalog.begin() as s:
        rec = s.get(VMRecord, "swap")
        rec.spec = {**rec.spec, "disks": [{**rec.spec["disks"][0], "path": copy}]}

    after = run(appliance.backups.create(appliance.vms.spec("swap"))).manifest
    assert after.kind == "full"
    assert any("no longer uses" in n and vda in n for n in after.notes), after.notes
    assert restores_exactly(appliance, after.backup_id, "vda", image_to_raw(copy, tmp_path / "ref.raw"), tmp_path)


def test_chain_problem_trusts_carried_bitmaps_and_not_other_branches(tmp_path: Path):
    base, top, other = (str(tmp_path / n) for n in ("base.qcow2", "top.qcow2", "other.qcow2"))
    for f in (base, top, other):
        Path(f).touch()
    made_on_base = Checkpoint("cairn-x", base)
    assert chain_problem([top, base], made_on_base) is None                        # snapshot on top since
    assert chain_problem([top], Checkpoint("cairn-x", str(tmp_path / "gone.qcow2"))) is None   # committed away
    assert "no longer uses" in chain_problem([other], made_on_base)                # another branch or image


def test_plan_bases_accepts_only_the_parents_checkpoints(appliance: Appliance):
    (vda,) = stopped_vm(appliance, "plan", [16 * MiB])
    first = run(appliance.backups.create(appliance.vms.spec("plan"))).manifest
    second = run(appliance.backups.create(appliance.vms.spec("plan"))).manifest
    with appliance.catalog() as s:
        current = {r.disk: r for r in s.scalars(select(CheckpointRecord).where(CheckpointRecord.state == "current"))}
    fine = plan_bases(["vda"], second, current, 63)
    assert fine.known == {"vda": Checkpoint(second.checkpoint, vda)} and fine.full == {}
    stale = plan_bases(["vda"], first, current, 63)
    assert set(stale.full) == {"vda"}
    assert stale.notes == [(f"vda: its checkpoint {second.checkpoint} belongs to backup {second.backup_id}, "
                            f"not to the parent {first.backup_id}; full read")]
    full = plan_bases(["vda"], None, current, 63)
    assert set(full.full) == {"vda"} and full.notes == []
