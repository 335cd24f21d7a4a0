"""The store in an S3 bucket: the S3 backend against radosgw on the test cluster (ceph_cluster.py).

Each test uses a bucket of its own. Credentials reach the backend the way they reach Cairn: from
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from store_helpers import (
    BLOCK,
    PACK,
    backup_image,
    backups_beside_gc,
    disk_image,
    gc_locks_exclude_and_expire,
    ingest_images,
    read_back,
)

from dedup import (
    ChunkWriteError,
    NotAStoreError,
    RetentionPolicy,
    Store,
    StoreFullError,
    StoreLocationError,
    StoreUnreachableError,
    collect_garbage,
    open_backend,
    prune,
    verify_store,
)
from dedup import s3 as s3_backend
from restore import restore_disk

CAIRN = str(Path(sys.executable).with_name("cairn"))
MiB = 1 << 20


@pytest.fixture
def s3_url(ceph_s3, monkeypatch) -> str:
    for name, value in ceph_s3.s3_env().items():
        monkeypatch.setenv(name, value)
    return ceph_s3.s3_url(ceph_s3.unique("bucket"))


def s3_client(cluster):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **cluster.s3)


def after_clock_error() -> None:
    time.sleep(s3_backend.CLOCK_ERROR_NS / 1e9 + 0.2)


def test_s3_store_backs_up_verifies_and_restores_byte_exact(ceph_s3, s3_url, tmp_path):
    """Production sizes, encrypted: the data pack goes up as a multipart upload of 16 MiB parts."""
    image = tmp_path / "vda.raw"
    data = disk_image("rrrrz" * 4 + "ts", tail=4608, seed=3)
    image.write_bytes(data)
    store = Store.init(s3_url, passphrase="pass phrase")
    manifest = ingest_images(store, "web1", {"vda": image})
    store.close()

    store = Store.open(s3_url, passphrase="pass phrase")
    assert [m.backup_id for m in store.list_backups()] == [manifest.backup_id]
    assert read_back(store, manifest, "vda") == data
    assert verify_store(store).ok
    restore_disk(store, manifest.backup_id, "vda", tmp_path / "restored.raw", verify=True)
    assert (tmp_path / "restored.raw").read_bytes() == data
    bucket, prefix = s3_url.split("://")[1].split("?")[0].split("/", 1)
    listed = s3_client(ceph_s3).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/packs/")["Contents"]
    assert max(o["Size"] for o in listed) > 16 * MiB   # one pack, one object
    assert all(not u for u in s3_client(ceph_s3).list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    store.close()


def test_s3_store_prunes_collects_and_runs_two_backups_beside_gc(s3_url, tmp_path):
    store = Store.init(s3_url, block_size=BLOCK, pack_size=PACK)
    common = disk_image("rrr", seed=30)
    old = [backup_image(store, "old", {"vda": common + disk_image("r", seed=n)}) for n in range(2)]
    assert prune(store, "old", RetentionPolicy(keep_last=1)).removed == (old[0].backup_id,)
    after_clock_error()
    images = {vm: common + disk_image("rr", seed=n) for n, vm in enumerate(["a", "b"], 31)}
    stores = {vm: Store.open(s3_url) for vm in images}
    checker = Store.open(s3_url)
    manifests = backups_beside_gc(stores, images, store, lambda: verify_store(checker))
    assert verify_store(store).ok
    for vm, data in images.items():
        restore_disk(store, manifests[vm].backup_id, "vda", tmp_path / f"{vm}.raw")
        assert (tmp_path / f"{vm}.raw").read_bytes() == data
    # A pack a writer touched while GC had moved it aside came back as a fresh copy: a later GC
    # reclaims what is dead in it.
    after_clock_error()
    assert collect_garbage(store, grace=timedelta(0)).problems == () and verify_store(store).ok
    for vm, data in images.items():
        assert read_back(store, manifests[vm], "vda") == data
    for s in [store, checker, *stores.values()]:
        s.close()


def test_s3_locks_exclude_a_second_gc_and_go_stale_with_their_holder(s3_url, monkeypatch):
    monkeypatch.setattr(s3_backend, "LOCK_SECONDS", 2)
    store = Store.init(s3_url, block_size=BLOCK, pack_size=PACK)
    # A writer that vanished: its lock object goes stale once its heartbeat stops.
    gc_locks_exclude_and_expire(store, Store.open(s3_url), os.urandom(MiB), lambda _: time.sleep(3.5))
    assert store.backend.list("writers") == []
    store.close()


def test_s3_faults_say_what_to_do(ceph_s3, s3_url, monkeypatch):
    for bad in ["s3://", "s3://b/x?endpoint=http://h&endpoint=http://i", "s3://b/x?key=secret",
                "s3://user:pw@b/x", "s3://b/x?lock=governance"]:
        with pytest.raises(StoreLocationError):
            open_backend(bad)
    with pytest.raises(NotAStoreError, match="has no config.json"):
        Store.open(s3_url)   # no such bucket yet
    Store.init(s3_url, block_size=BLOCK, pack_size=PACK).close()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreUnreachableError, match="refused the credentials.*AWS_SECRET_ACCESS_KEY"):
        Store.open(s3_url)
    monkeypatch.undo()
    for name, value in ceph_s3.s3_env().items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError, match="does not answer"):
        Store.open(s3_url.replace(ceph_s3.s3_endpoint, "http://127.0.0.1:1"))
    assert time.monotonic() - started < 15


def test_a_gateway_lost_mid_backup_fails_it_clearly_loses_nothing_and_the_next_run_succeeds(ceph_s3, s3_url):
    store = Store.init(s3_url, block_size=BLOCK, pack_size=PACK)
    first = disk_image("rrr", seed=50)
    kept = backup_image(store, "web1", {"vda": first})
    data = disk_image("rrrrrr", seed=51)
    try:
        # From the worker that met it (ChunkWriteError), the pack being closed or the abort that
        # cannot clean up (StoreUnreachableError): the message says what happened and what to do.
        with pytest.raises((ChunkWriteError, StoreUnreachableError), match="does not answer.*run again"), \
                store.begin_backup("web1") as session:
            writer = session.disk("vda", len(data))
            writer.put(0, data[:3 * MiB])
            session._pipeline.drain()
            ceph_s3.stop_rgw()
            writer.put(3 * MiB, data[3 * MiB:])
            session.commit()
    finally:
        ceph_s3.start_rgw()
    assert [m.backup_id for m in store.list_backups()] == [kept.backup_id]
    assert read_back(store, kept, "vda") == first
    latest = backup_image(store, "web1", {"vda": data})
    assert read_back(store, latest, "vda") == data and verify_store(store).ok
    store.close()


def test_a_full_bucket_fails_the_backup_clearly_loses_nothing_and_the_next_run_succeeds(ceph_s3, s3_url):
    bucket = s3_url.split("://")[1].split("/")[0]
    store = Store.init(s3_url, block_size=BLOCK, pack_size=PACK)
    first = disk_image("rrrr", seed=40)
    kept = backup_image(store, "web1", {"vda": first})
    ceph_s3.cli("radosgw-admin", "quota", "set", "--quota-scope=bucket", f"--bucket={bucket}", "--max-size=2M")
    ceph_s3.cli("radosgw-admin", "quota", "enable", "--quota-scope=bucket", f"--bucket={bucket}")
    with pytest.raises(StoreFullError, match="quota is full.*prune"):
        backup_image(store, "web1", {"vda": disk_image("rrrrrrrr", seed=41)})
    assert [m.backup_id for m in store.list_backups()] == [kept.backup_id]
    assert read_back(store, kept, "vda") == first and verify_store(store).ok
    assert store.backend.list("writers") == []

    ceph_s3.cli("radosgw-admin", "quota", "disable", "--quota-scope=bucket", f"--bucket={bucket}")
    second = disk_image("rrrrrrrr", seed=41)
    latest = backup_image(store, "web1", {"vda": second})
    assert read_back(Store.open(s3_url), latest, "vda") == second and verify_store(store).ok
    store.close()


def test_cli_works_on_an_s3_store(ceph_s3, s3_url, tmp_path):
    env = {**os.environ, "CAIRN_DATA_DIR": str(tmp_path / "data"), "CAIRN_STORE": s3_url, "COLUMNS": "400"}

    def cairn(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], check=False, env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    assert s3_url.split("?")[0] in cairn("store", "init", "--block-size", "256K", "--pack-size", "1M").stdout
    data = disk_image("rs", seed=21)
    with Store.open(s3_url) as store:
        manifest = backup_image(store, "web1", {"vda": data})
    assert json.loads(cairn("store", "verify", "--json").stdout)["ok"] is True
    cairn("restore", "disk", manifest.backup_id, "--to", str(tmp_path / "vda.raw"))
    assert (tmp_path / "vda.raw").read_bytes() == data
