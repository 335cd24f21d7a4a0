"""Snapshot trees on real QEMU: live snapshots of all disks in one transaction, commit and pull
of live chains, offline snapshots and revert, reconciliation, the chain limit. Every delete must
leave the guest-visible data as it was, and incremental backups must stay byte-exact and small
across all of it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from backup_helpers import (
    CHUNK,
    MiB,
    new_guest_vm,
    paused_backup_with_reference,
    reference_copy,
    root_node,
    run,
    same_content,
    wait_serial,
    write_pattern,
)
from job_helpers import job_result
from snapshot_helpers import has_pattern, qemu_io_write

from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from restore import restore_disk

DISKS = ["vda", "vdb"]


async def disk_copies(appliance: Appliance, vm: str, refdir: Path) -> Path:
    """What each disk of the running VM holds now, read through QEMU while the guest is paused."""
    refdir.mkdir()
    async with appliance.driver.session(vm) as s:
        await s.execute("stop")
        for d in DISKS:
            await reference_copy(s, d, refdir / f"{d}.raw", refdir / "ref.sock")
        await s.execute("cont")
    return refdir


def backup_with_reference(appliance: Appliance, vm: str, refdir: Path):
    refdir.mkdir()
    return run(paused_backup_with_reference(appliance, vm, DISKS, refdir))


def assert_restores_exactly(appliance: Appliance, manifest, refdir: Path, tmp_path: Path) -> None:
    for disk in DISKS:
        raw = tmp_path / f"{manifest.backup_id}-{disk}.raw"
        restore_disk(appliance.store, manifest.backup_id, disk, raw, fmt="raw")
        assert same_content(refdir / f"{disk}.raw", raw), (manifest.backup_id, disk)


def assert_same_disks(before: Path, after: Path) -> None:
    for disk in DISKS:
        assert same_content(before / f"{disk}.raw", after / f"{disk}.raw"), disk


def vda(appliance: Appliance, vm: str) -> str:
    return appliance.vms.spec(vm).disks[0].path


@pytest.mark.slow
def test_live_snapshots_commit_and_pull_keep_data_and_incrementals_exact(appliance: Appliance, guest_kernel,
                                                                          tmp_path: Path):
    new_guest_vm(appliance, guest_kernel, "web", [128 * MiB, 32 * MiB])
    run(appliance.vms.start("web"))
    snaps = appliance.snapshots
    try:
        wait_serial(appliance, "web", "CAIRN: PATTERN-WRITTEN")
        full = backup_with_reference(appliance, "web", tmp_path / "r0")
        run(write_pattern(appliance, "web", "vda", 0x11, 8 * MiB, 64 << 10))
        run(write_pattern(appliance, "web", "vdb", 0x12, 1 * MiB, 4096))

        s1 = run(snaps.create("web", "s1"))
        # Both disks moved to their new overlays in the one transaction.
        tree = snaps.tree("web")
        for disk in DISKS:
            assert tree.active(disk).parent == s1.nodes[disk]

        async def roots() -> list[str]:
            async with appliance.driver.session("web") as s:
                return [await root_node(s, d) for d in DISKS]
        assert run(roots()) == [tree.active(d).id for d in DISKS]

        run(write_pattern(appliance, "web", "vda", 0x21, 20 * MiB, 64 << 10))
        inc1 = backup_with_reference(appliance, "web", tmp_path / "r1")
        assert inc1.kind == "incremental" and inc1.parent == full.backup_id and not inc1.notes
        # The writes from before the snapshot (8 MiB, vdb) and after it (20 MiB), nothing else.
        assert sum(d.stats.bytes_read for d in inc1.disks) <= 3 * CHUNK
        assert_restores_exactly(appliance, inc1, tmp_path / "r1", tmp_path)

        run(snaps.create("web", "s2"))
        run(write_pattern(appliance, "web", "vda", 0x31, 40 * MiB, 64 << 10))
        before = run(disk_copies(appliance, "web", tmp_path / "before-pull"))
        merges = run(snaps.delete("web", "s1", via="pull"))      # stream the base into s2's layer
        assert {m.kind for m in merges} == {"pull"}
        assert_same_disks(before, run(disk_copies(appliance, "web", tmp_path / "after-pull")))

        run(write_pattern(appliance, "web", "vda", 0x41, 60 * MiB, 64 << 10))
        inc2 = backup_with_reference(appliance, "web", tmp_path / "r2")
        assert inc2.kind == "incremental" and not inc2.notes
        assert sum(d.stats.bytes_read for d in inc2.disks) <= 2 * CHUNK      # 40 MiB and 60 MiB
        assert_restores_exactly(appliance, inc2, tmp_path / "r2", tmp_path)

        run(snaps.create("web", "s3"))
        run(write_pattern(appliance, "web", "vda", 0x51, 70 * MiB, 64 << 10))
        before = run(disk_copies(appliance, "web", tmp_path / "before-commit"))
        assert {m.kind for m in run(snaps.delete("web", "s2", via="commit"))} == {"commit"}   # intermediate
        assert {m.kind for m in run(snaps.delete("web", "s3", via="commit", rate_limit=64 * MiB))} == {"commit"}  # active
        assert_same_disks(before, run(disk_copies(appliance, "web", tmp_path / "after-commit")))
        assert snaps.tree("web").snapshots == {}

        run(write_pattern(appliance, "web", "vda", 0x61, 80 * MiB, 64 << 10))
        inc3 = backup_with_reference(appliance, "web", tmp_path / "r3")
        assert inc3.kind == "incremental" and not inc3.notes
        assert sum(d.stats.bytes_read for d in inc3.disks) <= 2 * CHUNK      # 70 MiB and 80 MiB
        assert_restores_exactly(appliance, inc3, tmp_path / "r3", tmp_path)
        assert run(snaps.check("web")).problems == []

        # A running VM is not reverted behind its guest's back.
        run(snaps.create("web", "s4"))
        with pytest.raises(ConflictError, match="stop it before reverting"):
            run(snaps.revert("web", "s4"))
    finally:
        run(appliance.vms.stop("web", timeout=5, force=True))
    # The VM starts again from its active overlay (the chain resolves from the file).
    run(appliance.vms.start("web"))
    try:
        wait_serial(appliance, "web", "CAIRN: READY")
        assert run(snaps.check("web")).problems == []
    finally:
        run(appliance.vms.stop("web", timeout=5, force=True))


def test_offline_snapshots_revert_and_the_backup_after_a_revert_reads_in_full(appliance: Appliance, tmp_path: Path):
    appliance.vms.create("db", [32 * MiB, 16 * MiB])
    snaps = appliance.snapshots
    qemu_io_write(vda(appliance, "db"), 0xA1, 0, 64 << 10)
    run(appliance.backups.create(appliance.vms.spec("db")))

    s1 = run(snaps.create("db", "s1"))
    qemu_io_write(vda(appliance, "db"), 0xA2, 4 * MiB, 64 << 10)
    inc = run(appliance.backups.create(appliance.vms.spec("db"))).manifest
    assert inc.kind == "incremental" and not inc.notes
    assert sum(d.stats.bytes_read for d in inc.disks) <= CHUNK
    ref = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", vda(appliance, "db"), str(ref)], check=True)
    restore_disk(appliance.store, inc.backup_id, "vda", tmp_path / "out.raw")
    assert same_content(ref, tmp_path / "out.raw")

    run(snaps.create("db", "s2"))
    qemu_io_write(vda(appliance, "db"), 0xA3, 0, 64 << 10)
    s2_layer = snaps.tree("db").nodes[snaps.tree("db").snapshot("s2").nodes["vda"]].file

    run(snaps.revert("db", "s1"))
    assert has_pattern(vda(appliance, "db"), 0xA1, 0, 64 << 10)
    assert has_pattern(vda(appliance, "db"), 0, 4 * MiB, 64 << 10)
    assert has_pattern(s2_layer, 0xA2, 4 * MiB, 64 << 10)          # the old branch is still there
    assert snaps.tree("db").current_parent().id == s1.id

    after = run(appliance.backups.create(appliance.vms.spec("db"))).manifest
    assert after.kind == "full" and any("missing" in n for n in after.notes), after.notes

    # s1 now has two children (s2's branch and the new active layer): commit cannot work.
    with pytest.raises(ConflictError, match="children"):
        run(snaps.delete("db", "s1", via="commit"))
    with pytest.raises(NotFoundError):
        run(snaps.delete("db", "nope"))
    with pytest.raises(ConflictError, match="already has a snapshot named"):
        run(snaps.create("db", "s2"))
    run(snaps.delete("db", "s1"))                                     # pulled into both children
    assert has_pattern(vda(appliance, "db"), 0xA1, 0, 64 << 10)
    assert has_pattern(s2_layer, 0xA2, 4 * MiB, 64 << 10) and has_pattern(s2_layer, 0xA1, 0, 64 << 10)
    assert run(snaps.check("db")).problems == []


def test_a_layer_deleted_behind_cairns_back_stops_changes_until_repaired(appliance: Appliance):
    appliance.vms.create("lost", [16 * MiB])
    snaps = appliance.snapshots
    run(snaps.create("lost", "a"))
    run(snaps.create("lost", "b"))
    run(snaps.revert("lost", "a"))               # b's layer is now an old branch's leaf
    tree = snaps.tree("lost")
    Path(tree.nodes[tree.snapshot("b").nodes["vda"]].file).unlink()

    problems = run(snaps.check("lost")).problems
    assert len(problems) == 1 and "is missing" in problems[0]
    with pytest.raises(ConflictError, match="does not match its disks.*--repair"):
        run(snaps.create("lost", "c"))
    assert {s.name for s in snaps.tree("lost").snapshots.values()} == {"a", "b"}

    result = run(snaps.check("lost", fix=True))
    assert any("dropped snapshot b" in n for n in result.repaired)
    assert run(snaps.check("lost")).problems == []
    run(snaps.create("lost", "c"))


def test_chain_limit_rotates_automatic_snapshots_and_refuses_manual_ones(appliance: Appliance):
    appliance.vms.create("lim", [16 * MiB])
    snaps = appliance.snapshots
    snaps.chain_limit = 4
    for name in ("auto1", "man1", "auto2"):
        run(snaps.create("lim", name, automatic=name.startswith("auto")))
    with pytest.raises(ConflictError, match="4 of at most 4 layers"):
        run(snaps.create("lim", "man2"))
    run(snaps.create("lim", "auto3", automatic=True))
    tree = snaps.tree("lim")
    assert sorted(s.name for s in tree.snapshots.values()) == ["auto2", "auto3", "man1"]
    assert len(tree.active_chain("vda")) == 4
    assert run(snaps.check("lim")).problems == []


def test_api_and_cli_drive_the_same_tree(appliance: Appliance, appliance_data_dir: Path, api_client):
    appliance.vms.create("apivm", [16 * MiB])
    client = api_client
    base = "/api/v1/vms/apivm/snapshots"
    assert job_result(client, client.post(base, json={"name": "first"}))["name"] == "first"
    assert client.post(base, json={"name": "first"}).status_code == 409
    assert client.post(f"{base}/nope/revert").status_code == 404

    cairn = Path(sys.executable).with_name("cairn")
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir)}
    subprocess.run([str(cairn), "snapshot", "create", "apivm", "--name", "second", "--auto"], env=env, check=True,
                   capture_output=True)
    shown = subprocess.run([str(cairn), "snapshot", "list", "apivm"], env=env, check=True, capture_output=True,
                           text=True).stdout
    assert "first" in shown and "second" in shown and "now" in shown

    listed = client.get(base).json()
    assert [s["name"] for s in listed["snapshots"]] == ["first", "second"]
    assert listed["current"]["parent"] == listed["snapshots"][1]["id"]
    gone = job_result(client, client.request("DELETE", f"{base}/first", json={"via": "pull"}))
    assert gone["merges"][0]["via"] == "pull"
    assert client.post(f"{base}/check").json() == {"problems": [], "repaired": [], "recovered": []}
