"""Format-1 stores: still listed, verified and restored; upgraded to format 2 in place, even
when the upgrade is killed half-way and run again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from format1 import Format1Store
from store_helpers import CHUNK, backup_changes, disk_image, read_back

from dedup import (
    GcUnsafeError,
    Store,
    StoreFormatError,
    collect_garbage,
    store_stats,
    upgrade_store,
    verify_store,
)
from restore import restore_disk

CAIRN = str(Path(sys.executable).with_name("cairn"))
PASSPHRASE = "old store, new format"
T0 = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)


def old_store(path: Path, passphrase: str | None = None) -> dict[str, bytes]:
    """A format-1 store of two VMs: fulls and incrementals sharing chunks, zero chunks, a short tail."""
    store = Format1Store(path, passphrase=passphrase)
    images = {"b1": disk_image("rzt", tail=5000, seed=1), "b2": disk_image("rzt", tail=5000, seed=1),
              "b3": disk_image("rrz", seed=3)}
    changed = bytearray(images["b1"])
    changed[CHUNK + 4096:CHUNK + 8192] = b"\x5a" * 4096
    images["b2"] = bytes(changed)
    store.backup("web", "b1", {"vda": images["b1"], "vdb": disk_image("s", seed=2)}, T0)
    store.backup("web", "b2", {"vda": images["b2"], "vdb": disk_image("s", seed=2)}, T0 + timedelta(days=1),
                 kind="incremental", parent="b1")
    store.backup("db", "b3", {"vda": images["b3"]}, T0 + timedelta(days=2))
    return images


def opened(path: Path, passphrase: str | None) -> Store:
    return Store.open(path, passphrase=passphrase)


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE])
def test_a_format1_store_lists_verifies_and_restores(tmp_path, passphrase):
    images = old_store(tmp_path / "store", passphrase)
    store = opened(tmp_path / "store", passphrase)
    assert store.config.layout == 1
    assert [m.backup_id for m in store.list_backups()] == ["b1", "b2", "b3"]
    report = verify_store(store)
    assert report.ok and report.chunks_referenced == 7  # r, t, the tail, s, b2's written zero chunk, b3's r r
    for backup_id, data in images.items():
        restore_disk(store, backup_id, "vda", tmp_path / f"{backup_id}.raw")
        assert (tmp_path / f"{backup_id}.raw").read_bytes() == data
    assert store_stats(store).backups == 3
    with pytest.raises(StoreFormatError, match="cairn store upgrade"):
        store.begin_backup("web")
    with pytest.raises(StoreFormatError, match="cairn store upgrade"):
        collect_garbage(store)


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE])
def test_upgrade_converts_every_backup_in_place(tmp_path, passphrase):
    path = tmp_path / "store"
    images = old_store(path, passphrase)
    before = opened(path, passphrase)
    old = {m.backup_id: m for m in before.list_backups()}
    report = upgrade_store(before, block_size=256 << 10, pack_size=CHUNK)
    assert report.converted == ("b1", "b2", "b3") and report.already == 0 and report.chunks_removed

    store = opened(path, passphrase)
    config = json.loads((path / "config.json").read_text())
    assert (config["version"], config["block_size"], config["id"]) == (3, 256 << 10, before.config.id)
    assert store.config.key_fingerprint == before.config.key_fingerprint
    assert not (path / "chunks").exists() and not list(path.glob("backups/*/*/*.index"))
    for m in store.list_backups():
        was = old[m.backup_id]
        assert m.format_version == 2
        assert (m.created, m.kind, m.parent, m.checkpoint, m.notes, m.vm_definition) == (
            was.created, was.kind, was.parent, was.checkpoint, was.notes, was.vm_definition)
        assert read_back(store, m, "vda") == images[m.backup_id]
    assert verify_store(store).ok
    # b2 shares all but its changed chunk with b1: it added little.
    assert report.bytes_stored < sum(len(d) for d in images.values())
    assert upgrade_store(store).converted == ()
    child = backup_changes(store, store.get_backup("b2"), {"vda": [(0, b"\x01" * 4096)]})
    assert read_back(store, child, "vda") == b"\x01" * 4096 + images["b2"][4096:]
    collect_garbage(store, grace=timedelta(0))
    assert verify_store(opened(path, passphrase)).ok


def test_upgrade_refuses_to_drop_chunks_an_unreadable_backup_may_need(tmp_path):
    old_store(tmp_path / "store")
    (tmp_path / "store" / "backups" / "web" / "b2" / "manifest.json").write_text("{")
    with pytest.raises(Exception, match="web/b2"):
        upgrade_store(Store.open(tmp_path / "store"))
    assert (tmp_path / "store" / "chunks").is_dir()
    assert [m.format_version for m in Store.open(tmp_path / "store").list_backups()] == [1, 1]
    with pytest.raises(GcUnsafeError):
        collect_garbage(Store.open(tmp_path / "store"))


def test_an_upgrade_killed_half_way_runs_again_and_loses_nothing(tmp_path):
    path = tmp_path / "store"
    old = Format1Store(path, chunk_size=4 * CHUNK)
    images = {f"b{n}": disk_image("rrrrrrrrrrrrrrrr", seed=n) for n in range(6)}
    for n, (backup_id, data) in enumerate(images.items()):
        old.backup("web", backup_id, {"vda": data}, T0 + timedelta(hours=n))
    env = {**os.environ, "CAIRN_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "400"}
    command = [CAIRN, "store", "upgrade", "--store", str(path), "--json"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def versions() -> list[int]:
        return [json.loads(p.read_text())["format_version"] for p in sorted(path.glob("backups/web/*/manifest.json"))]
    deadline = time.monotonic() + 120
    while 2 not in versions():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    half = versions()
    assert 1 in half and 2 in half, half  # killed with some backups converted and others not

    # Half-way, every backup restores, from whichever format it is in.
    store = Store.open(path)
    assert store.config.layout == 2 and (path / "chunks").is_dir()
    for backup_id, data in images.items():
        assert read_back(store, store.get_backup(backup_id), "vda") == data
    assert verify_store(store).ok

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["already"] >= 1 and len(report["converted"]) == 6 - report["already"]
    assert versions() == [2] * 6 and not (path / "chunks").exists()
    store = Store.open(path)
    for backup_id, data in images.items():
        assert read_back(store, store.get_backup(backup_id), "vda") == data
    assert verify_store(store).ok


def test_the_appliances_store_upgrades_as_a_job_through_the_api(appliance_data_dir: Path):
    """The upgrade is a job like verify and GC: an admin's, on the store's resource, its report
    the job's result; the backups restore from format 2 afterwards."""
    from conftest import signed_in_client

    from appliance.access.roles import Role
    from appliance.context import Appliance

    images = old_store(appliance_data_dir / "store")
    appliance = Appliance.open(str(appliance_data_dir))
    operator = signed_in_client(appliance, Role.OPERATOR)
    assert operator.post("/api/v1/store/upgrade", json={}).status_code == 403
    admin = signed_in_client(appliance, Role.ADMIN)
    refused = admin.post("/api/v1/store/upgrade", json={"block_size": 3000})
    assert refused.status_code == 422 and "block size" in refused.json()["error"]["message"]
    r = admin.post("/api/v1/store/upgrade", json={"block_size": 1 << 20})
    assert r.status_code == 202 and r.json()["kind"] == "store.upgrade" and r.json()["resource"].startswith("store:")
    done = appliance.jobs.wait(r.json()["id"], 240)
    assert done.state == "succeeded", done.error
    assert sorted(done.result["converted"]) == ["b1", "b2", "b3"] and done.result["already"] == 0
    store = Store.open(appliance_data_dir / "store")
    assert store.config.layout == 2 and not (appliance_data_dir / "store" / "chunks").exists()
    for backup_id, data in images.items():
        assert read_back(store, store.get_backup(backup_id), "vda") == data
