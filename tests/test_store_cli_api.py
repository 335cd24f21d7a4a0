"""`cairn store ...` through the real executable, and /api/v1/store through the app."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from job_helpers import job_done, job_result
from store_helpers import MiB, backup_image, block_ids, block_pack, disk_image, flip_byte, pack_files

from appliance.backups.records import BackupRecord
from appliance.catalog.engine import open_catalog
from appliance.context import Appliance
from appliance.settings import Settings
from dedup import Store
from dedup.gc import GC_LOCK
from dedup.locks import FileLock

CAIRN = str(Path(sys.executable).with_name("cairn"))


@pytest.fixture
def cairn(appliance_data_dir: Path):
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir), "COLUMNS": "400"}

    def call(*args: str, status: int = 0, group: str = "store") -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, group, *args], check=False, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == status, proc.stderr
        assert "Traceback" not in proc.stderr
        return proc
    return call


def recorded_backups(data_dir: Path, store: Store, vm: str, days: int) -> list[str]:
    """Backups a day apart, each also recorded in the appliance catalog as the backup service would."""
    catalog = open_catalog(Settings.resolve(data_dir).catalog_url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for day in range(days):
        m = backup_image(store, vm, {"vda": disk_image("rr", seed=day % 2)}, created=t0 + timedelta(days=day))
        with catalog.begin() as s:
            s.add(BackupRecord(id=m.backup_id, vm_name=vm, store=str(store.path), kind="full", status="ok"))
        ids.append(m.backup_id)
    return ids


def catalog_records(data_dir: Path) -> dict[str, BackupRecord]:
    with open_catalog(Settings.resolve(data_dir).catalog_url)() as s:
        return {r.id: r for r in s.query(BackupRecord)}


def test_store_commands_end_to_end(cairn, appliance_data_dir: Path):
    store_dir = appliance_data_dir / "store"
    created = json.loads(cairn("init", "--block-size", "256K", "--pack-size", "1M", "--zstd-level", "5",
                               "--json").stdout)
    assert (created["block_size"], created["pack_size"], created["zstd_level"]) == (256 << 10, MiB, 5)
    store = Store.open(store_dir)
    ids = recorded_backups(appliance_data_dir, store, "web", days=3)

    stats = json.loads(cairn("stats", "--json").stdout)
    assert (stats["backups"], stats["chunks"], stats["logical_bytes"]) == (3, 16, 6 * MiB)
    assert json.loads(cairn("verify", "--json").stdout)["ok"]
    assert all(r.verified_at and r.damage == [] for r in catalog_records(appliance_data_dir).values())

    bad = block_ids(store, store.get_backup(ids[1]), "vda")[0]
    flip_byte(block_pack(store, bad), offset=store.blocks.locate(bad)[1].offset + 10)
    report = json.loads(cairn("verify", "--json", status=3).stdout)
    assert sorted(report["damaged_backups"]) == sorted([ids[1]])
    assert f"disk vda bytes 0-{(256 << 10) - 1}" in catalog_records(appliance_data_dir)[ids[1]].damage[0]
    assert "used by web/" + ids[1] in cairn("verify", status=3).stdout

    cairn("protect", ids[0], group="backup")
    plan = json.loads(cairn("prune", "--vm", "web", "--keep-last", "1", "--dry-run", "--json").stdout)
    assert plan["removed"] == [ids[1]] and len(store.list_backups()) == 3
    assert "no rule keeps it" in cairn("prune", "--vm", "web", "--keep-last", "1").stdout
    assert [m.backup_id for m in store.list_backups()] == [ids[0], ids[2]]
    assert catalog_records(appliance_data_dir)[ids[1]].status == "pruned"

    for path in pack_files(store):
        os.utime(path, (0, 0))
    packs = pack_files(store)
    dry = json.loads(cairn("gc", "--grace", "1h", "--dry-run", "--json").stdout)
    assert dry["chunks_removed"] == 8 + 1 and pack_files(store) == packs  # its blocks and its map page
    assert "9 blocks dropped" in cairn("gc", "--grace", "0").stdout
    assert json.loads(cairn("verify", "--json").stdout)["ok"]


def test_store_command_errors(cairn, tmp_path: Path):
    assert "not a Cairn store" in cairn("stats", "--store", str(tmp_path), status=1).stderr
    assert "no keep rule" in cairn("prune", "--vm", "web", "--store", str(tmp_path), status=1).stderr
    assert "not a duration" in cairn("gc", "--grace", "soon", status=2).stderr
    cairn("init", "--store", str(tmp_path / "s"))
    assert "already a Cairn store" in cairn("init", "--path", str(tmp_path / "s"), status=1).stderr
    assert "no backup nope" in cairn("protect", "nope", status=1, group="backup").stderr


def test_store_api(appliance_data_dir: Path, appliance: Appliance, api_client: TestClient):
    client = api_client
    ids = recorded_backups(appliance_data_dir, appliance.store, "web", days=2)

    assert client.get("/api/v1/store/stats").json()["backups"] == 2
    blocks = {b for i in ids for b in block_ids(appliance.store, appliance.store.get_backup(i), "vda")}
    assert len(blocks) >= 2   # the half sampled is the store's data blocks, whatever their size
    sampled = job_result(client, client.post("/api/v1/store/verify", json={"sample_percent": 50}))["chunks_checked"]
    assert sampled == len(blocks) // 2
    assert client.post("/api/v1/store/verify", json={"sample_percent": 0}).status_code == 422

    r = client.post("/api/v1/store/prune", json={"vm": "web", "keep_daily": 1, "dry_run": True})
    assert [d["keep"] for d in job_result(client, r)["decisions"]] == [True, False]
    r = client.post("/api/v1/store/prune", json={"vm": "web"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "RetentionRuleError"
    r = client.post("/api/v1/store/prune", json={"vm": "web", "keep_last": 1, "keep_forever": True})
    assert r.status_code == 422 and r.json()["error"]["code"] == "ValidationError"
    r = client.post("/api/v1/store/prune", json={"vm": "web", "keep_last": 1})
    assert job_result(client, r)["decisions"][1]["keep"] is False
    assert appliance.backups.get(ids[0]).status == "pruned"

    held = FileLock.try_acquire(appliance.store.path / "locks" / GC_LOCK)
    try:
        gc = job_done(client, client.post("/api/v1/store/gc", json={"grace_seconds": 0}))
        assert gc["state"] == "failed" and "another GC, repair or upgrade is running" in gc["error"]
    finally:
        held.release()
    assert job_result(client, client.post("/api/v1/store/gc", json={"grace_seconds": 0, "dry_run": True}))["dry_run"]


def test_restore_list_names_a_damaged_manifest_and_lists_the_others(appliance_data_dir: Path, tmp_path: Path):
    """One backup's sealed manifest replaced by another's (issue 15): listing, verify and restore
    name that one and go on with the rest."""
    store = Store.init(tmp_path / "store", passphrase="pass phrase")
    good, bad = (backup_image(store, "web", {"vda": disk_image("r", seed=n)}) for n in (1, 2))
    directory = tmp_path / "store" / "backups" / "web"
    good_manifest = (directory / good.backup_id / "manifest.json").read_bytes()
    (directory / bad.backup_id / "manifest.json").write_bytes(good_manifest)
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir), "COLUMNS": "400",
           "CAIRN_STORE_PASSPHRASE": "pass phrase"}

    def cairn(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CAIRN, *args, "--store", str(tmp_path / "store")], check=False, env=env,
                              capture_output=True, text=True, timeout=60)

    listed = cairn("restore", "list", "--vm", "web", "--json")
    assert listed.returncode == 3 and "Traceback" not in listed.stderr
    assert [b["backup_id"] for b in json.loads(listed.stdout)] == [good.backup_id]
    assert f"unreadable backup web/{bad.backup_id}" in listed.stderr and "cannot be decrypted" in listed.stderr
    assert good.backup_id in cairn("restore", "list").stdout
    verified = json.loads(cairn("store", "verify", "--json").stdout)
    assert list(verified["damaged_backups"]) == [bad.backup_id] and verified["backups"] == [good.backup_id]
    restored = cairn("restore", "disk", good.backup_id, "--to", str(tmp_path / "vda.raw"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "vda.raw").read_bytes() == disk_image("r", seed=1)
