"""Retention locks (dedup/immutability.py): a locked backup survives a delete, a prune and a GC by an
admin, is pruned once its lock has expired; on S3 Object Lock the bucket itself holds it, and a
sync carries the lock to an off-site copy."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_helpers import BLOCK, PACK, backup_image, disk_image, read_back

from dedup import (
    BackupLockedError,
    RetentionPolicy,
    Store,
    collect_garbage,
    lock_backup,
    locked_until,
    open_replica,
    prune,
    sync_store,
    verify_store,
)
from dedup.prune import delete_backup

CAIRN = str(Path(sys.executable).with_name("cairn"))
LOCK = timedelta(seconds=4)


def test_a_locked_backup_survives_delete_prune_and_gc_then_goes_once_its_lock_expires(tmp_path):
    store = Store.init(tmp_path / "store", block_size=BLOCK, pack_size=PACK)
    common = disk_image("rr", seed=1)
    locked_image = common + disk_image("r", seed=2)
    locked = backup_image(store, "web1", {"vda": locked_image})
    newer = [backup_image(store, "web1", {"vda": common + disk_image("r", seed=n)}) for n in (3, 4)]
    until = datetime.now(UTC) + LOCK
    lock_backup(store, locked.backup_id, until)
    assert locked_until(store, locked) == until

    with pytest.raises(BackupLockedError, match="locked until .*cannot be deleted before then"):
        delete_backup(store, locked)
    with pytest.raises(BackupLockedError, match="extended, never shortened"):
        lock_backup(store, locked.backup_id, until - timedelta(seconds=1))
    report = prune(store, "web1", RetentionPolicy(keep_last=1))
    assert report.removed == (newer[0].backup_id,)
    (kept,) = [d for d in report.decisions if d.backup_id == locked.backup_id]
    assert kept.keep and kept.reasons[0].startswith("locked until")
    gc = collect_garbage(store, grace=timedelta(0))
    assert gc.packs_locked > 0 and gc.packs_repacked == 0, "the locked backup's packs stay as they are"
    assert read_back(store, locked, "vda") == locked_image and verify_store(store).ok

    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.1)
    assert prune(store, "web1", RetentionPolicy(keep_last=1)).removed == (locked.backup_id,)
    gc = collect_garbage(store, grace=timedelta(0))
    assert gc.packs_locked == 0 and gc.chunks_removed > 0
    assert [m.backup_id for m in store.list_backups()] == [newer[1].backup_id] and verify_store(store).ok

    env = {**os.environ, "CAIRN_DATA_DIR": str(tmp_path / "data"), "CAIRN_STORE": str(tmp_path / "store")}
    done = subprocess.run([CAIRN, "store", "lock", newer[1].backup_id, "--for", "30d"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "is locked until" in done.stdout, done.stderr
    assert abs(locked_until(store, newer[1]) - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    with pytest.raises(BackupLockedError):
        delete_backup(store, newer[1])


def test_an_admin_cannot_delete_a_locked_backup_through_the_api(api_client, appliance):
    appliance.vms.create("web1", [8 << 20])
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5e 0 2M", appliance.vms.spec("web1").disks[0].path],
                   check=True, capture_output=True)
    backup_id = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": "web1"}).id, 240).result["backup_id"]
    until = datetime.now(UTC) + timedelta(days=30)
    answer = api_client.post(f"/api/v1/store/backups/{backup_id}/lock", json={"until": until.isoformat()})
    assert answer.status_code == 200 and answer.json()["locked_until"].startswith(f"{until:%Y-%m-%dT%H:%M}")
    refused = api_client.delete(f"/api/v1/backups/{backup_id}")
    assert refused.status_code == 409 and "locked until" in refused.json()["error"]["message"]
    assert appliance.store.get_backup(backup_id)
    # A date in the past, or without a zone, locks nothing: the request's fault, not the appliance's.
    for when in [(datetime.now(UTC) - timedelta(days=1)).isoformat(), "2030-01-01T00:00:00"]:
        answer = api_client.post(f"/api/v1/store/backups/{backup_id}/lock", json={"until": when})
        assert answer.status_code == 422, answer.text


def s3_client(cluster):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **cluster.s3)


def test_object_lock_holds_a_locked_backup_against_anyone_and_a_sync_carries_the_lock(ceph_s3, monkeypatch, tmp_path):
    for name, value in ceph_s3.s3_env().items():
        monkeypatch.setenv(name, value)
    bucket = ceph_s3.unique("locked")
    url = f"{ceph_s3.s3_url(bucket)}&lock=compliance"
    store = Store.init(url, block_size=BLOCK, pack_size=PACK)
    image = disk_image("rrr", seed=7)
    locked = backup_image(store, "web1", {"vda": image})
    until = datetime.now(UTC) + 2 * LOCK
    lock_backup(store, locked.backup_id, until)

    s3 = s3_client(ceph_s3)
    manifest_key = f"store/backups/web1/{locked.backup_id}/manifest.json"
    pack_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="store/packs/")["Contents"]
                 if not o["Key"].endswith("/")]
    for key in [manifest_key, *pack_keys]:
        retention = s3.get_object_retention(Bucket=bucket, Key=key)["Retention"]
        assert retention["Mode"] == "COMPLIANCE" and retention["RetainUntilDate"] >= until.replace(microsecond=0)
    # The bucket's owner, going around Cairn, cannot destroy the version nor shorten its retention.
    version = s3.head_object(Bucket=bucket, Key=manifest_key)["VersionId"]
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=bucket, Key=manifest_key, VersionId=version)
    with pytest.raises(s3.exceptions.ClientError, match="AccessDenied"):
        s3.put_object_retention(Bucket=bucket, Key=manifest_key, VersionId=version,
                                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until - LOCK / 2})
    # Through Cairn: refused, kept, worked around.
    with pytest.raises(BackupLockedError):
        delete_backup(store, locked)
    assert prune(store, "web1", RetentionPolicy(keep_last=1)).removed == ()
    backup_image(store, "web1", {"vda": disk_image("r", seed=8)})
    assert prune(store, "web1", RetentionPolicy(keep_last=1)).removed == ()
    assert collect_garbage(store, grace=timedelta(0)).packs_locked > 0
    assert read_back(store, locked, "vda") == image

    # An off-site copy of a locked backup into another Object Lock bucket is held there too.
    local = Store.init(tmp_path / "local", block_size=BLOCK, pack_size=PACK)
    offsite = backup_image(local, "db1", {"vda": disk_image("rr", seed=9)})
    lock_backup(local, offsite.backup_id, until)
    replica_url = f"{ceph_s3.s3_url(ceph_s3.unique('replica'))}&lock=compliance"
    target = open_replica(local, replica_url)
    assert sync_store(local, target).copied == (offsite.backup_id,)
    replica_bucket = replica_url.split("://")[1].split("/")[0]
    key = f"store/backups/db1/{offsite.backup_id}/manifest.json"
    assert s3.get_object_retention(Bucket=replica_bucket, Key=key)["Retention"]["Mode"] == "COMPLIANCE"

    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.1)
    assert prune(store, "web1", RetentionPolicy(keep_last=1)).removed == (locked.backup_id,)
    assert collect_garbage(store, grace=timedelta(0)).packs_locked == 0
    assert verify_store(store).ok
    store.close()
