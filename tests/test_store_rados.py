"""The store in a Ceph pool: the RADOS backend against a real one-node cluster (ceph_cluster.py).

Each test has a pool namespace of its own in the shared cluster, so it starts from an empty store.
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
    block_ids,
    disk_image,
    gc_locks_exclude_and_expire,
    ingest_images,
    read_back,
)

from dedup import (
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
from dedup import rados as rados_backend
from restore import restore_disk

CAIRN = str(Path(sys.executable).with_name("cairn"))
MiB = 1 << 20


@pytest.fixture
def rados_url(ceph_cluster) -> str:
    return ceph_cluster.rados_url(ceph_cluster.unique("store"))


def after_clock_error() -> None:
    """Wait until what was written so far is older than a GC without grace looks at."""
    time.sleep(rados_backend.CLOCK_ERROR_NS / 1e9 + 0.2)


def test_rados_store_backs_up_verifies_and_restores_byte_exact(ceph_cluster, rados_url, tmp_path):
    """The production sizes (1 MiB blocks, 64 MiB packs): a pack is streamed in several writes."""
    image = tmp_path / "vda.raw"
    data = disk_image("rrrrz" * 4 + "ts", tail=4608, seed=3)
    image.write_bytes(data)
    store = Store.init(rados_url)
    manifest = ingest_images(store, "web1", {"vda": image})
    store.close()

    store = Store.open(rados_url)
    assert [m.backup_id for m in store.list_backups()] == [manifest.backup_id]
    assert read_back(store, manifest, "vda") == data
    report = verify_store(store)
    assert report.ok and report.chunks_checked > 0
    result = restore_disk(store, manifest.backup_id, "vda", tmp_path / "restored.raw", verify=True)
    assert (tmp_path / "restored.raw").read_bytes() == data and result.bytes_written > 0
    # One pack is one object: the data pack (16 MiB and more, written in 8 MiB pieces); the page pack is
    # small enough to live in its directory entry, as do the manifest and config.json.
    namespace = rados_url.split("?")[0].rsplit("/", 1)[1]
    objects = ceph_cluster.cli("rados", "-p", ceph_cluster.store_pool, "-N", namespace, "ls").split()
    packs = [o for o in objects if o.startswith("f:packs/")]
    assert len(packs) == 1 and all(o.startswith(("f:", "d:")) for o in objects)
    size = int(ceph_cluster.cli("rados", "-p", ceph_cluster.store_pool, "-N", namespace, "stat", packs[0])
               .rsplit("size ", 1)[1])
    assert size > 16 * MiB
    store.close()


def test_encrypted_rados_store_prunes_and_collects(rados_url, tmp_path):
    store = Store.init(rados_url, block_size=BLOCK, pack_size=PACK, passphrase="pass phrase")
    common = disk_image("rr", seed=7)
    images = [common + disk_image("r", seed=n) for n in range(3)]
    manifests = [backup_image(store, "web1", {"vda": image}) for image in images]
    store.close()
    with pytest.raises(Exception, match="passphrase"):
        Store.open(rados_url)
    store = Store.open(rados_url, passphrase="pass phrase")
    assert prune(store, "web1", RetentionPolicy(keep_last=1)).removed == tuple(m.backup_id for m in
                                                                              reversed(manifests[:2]))
    assert collect_garbage(store, grace=timedelta(0)).chunks_removed == 0   # everything is within the clock error
    after_clock_error()
    gc = collect_garbage(store, grace=timedelta(0))
    # The two pruned backups' own blocks and map pages; a dead one left in a mostly live pack waits.
    assert gc.chunks_referenced == 48 + 1 and gc.chunks_removed + gc.chunks_within_grace == 2 * 17
    assert gc.chunks_removed >= 2 * 16
    live = set(block_ids(store, manifests[2], "vda")) | {bytes.fromhex(manifests[2].disk("vda").layout.root)}
    assert live <= {r.block_id for p in store.blocks.ensure_loaded().packs.values() for r in p.records}
    assert verify_store(store).ok
    restore_disk(store, manifests[2].backup_id, "vda", tmp_path / "last.raw")
    assert (tmp_path / "last.raw").read_bytes() == images[2]
    store.close()


def test_two_backups_gc_and_verify_at_once_on_rados(rados_url, tmp_path):
    """Blocks of a pruned backup are deduplicated against by two running backups while a GC
    without grace reclaims and a verify reads: every backup restores, verify is clean."""
    store = Store.init(rados_url, block_size=BLOCK, pack_size=PACK)
    common = disk_image("rrr", seed=30)
    gone = backup_image(store, "old", {"vda": common})
    store.backend.remove(f"backups/old/{gone.backup_id}/manifest.json")
    after_clock_error()
    images = {vm: common + disk_image("rr", seed=n) for n, vm in enumerate(["a", "b"], 31)}
    stores = {vm: Store.open(rados_url) for vm in images}
    checker = Store.open(rados_url)
    manifests = backups_beside_gc(stores, images, store, lambda: verify_store(checker))
    assert verify_store(store).ok
    for vm, data in images.items():
        restore_disk(store, manifests[vm].backup_id, "vda", tmp_path / f"{vm}.raw")
        assert (tmp_path / f"{vm}.raw").read_bytes() == data
    for s in [store, checker, *stores.values()]:
        s.close()


def test_rados_locks_exclude_a_second_gc_and_expire_with_their_holder(rados_url, monkeypatch):
    monkeypatch.setattr(rados_backend, "LOCK_SECONDS", 2)
    store = Store.init(rados_url, block_size=BLOCK, pack_size=PACK)
    # A writer that vanished: the OSD expires its lock once its heartbeat stops.
    backup_id = gc_locks_exclude_and_expire(store, Store.open(rados_url), os.urandom(MiB), lambda _: time.sleep(3.5))
    assert store.backend.list("writers") == [] and store.backend.stat(f"backups/web1/{backup_id}") is None
    store.close()


def test_rados_faults_say_what_to_do(ceph_cluster, tmp_path):
    conf = ceph_cluster.conf
    for bad in ["rados://", "rados://pool?conf=/x&conf=/y", "rados://pool?user=admin", "rados://pool?timeout=soon"]:
        with pytest.raises(StoreLocationError):
            open_backend(bad)
    with pytest.raises(StoreUnreachableError, match="pool 'nopool' does not exist"):
        open_backend(f"rados://nopool/x?conf={conf}")
    # A wrong key: refused at once, with where to look.
    keyring = tmp_path / "keyring"
    keyring.write_text("[client.admin]\n\tkey = AQBn4ZZlAAAAABAAq2h0MAeyKZ3lODb1YHVAnA==\n")
    with pytest.raises(StoreUnreachableError, match="refused client.admin.*keyring"):
        open_backend(f"rados://{ceph_cluster.store_pool}/x?conf={conf}&keyring={keyring}")
    # A key that may read and write but not call object classes: its store works until it needs a lock.
    pool = ceph_cluster.store_pool
    (entity,) = ceph_cluster.mon_command("auth get-or-create", entity="client.cairn-rw",
                                         caps=["mon", "allow r", "osd", f"allow rw pool={pool}"])
    keyring.write_text(f"[client.cairn-rw]\n\tkey = {entity['key']}\n")
    store = Store.init(f"rados://{pool}/rw-only?conf={conf}&id=cairn-rw&keyring={keyring}",
                       block_size=BLOCK, pack_size=PACK)
    with pytest.raises(StoreUnreachableError, match=f"caps must allow rwx on pool {pool}.*osd 'allow rwx"):
        backup_image(store, "web1", {"vda": disk_image("r", seed=1)})
    store.close()
    # An unreachable cluster: the monitors' address answers nothing; the timeout bounds the wait.
    dead = tmp_path / "dead.conf"
    dead.write_text(conf.read_text().replace(f":{ceph_cluster.mon_port}", ":1"))
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError, match="no answer from the Ceph monitors within 3 s"):
        open_backend(f"rados://{ceph_cluster.store_pool}/x?conf={dead}&timeout=3")
    assert time.monotonic() - started < 10


def test_a_full_pool_fails_the_backup_clearly_loses_nothing_and_the_next_run_succeeds(ceph_cluster, tmp_path):
    """A pool quota: the backup that runs into it fails with StoreFullError naming the remedy, the
    backups before it still restore, prune and GC work in the full pool, and after the quota is
    raised the next backup succeeds."""
    pool = ceph_cluster.unique("full")
    ceph_cluster.mon_command("osd pool create", pool=pool)
    ceph_cluster.mon_command("osd pool application enable", pool=pool, app="rados")
    try:
        url = ceph_cluster.rados_url("store", pool=pool)
        store = Store.init(url, block_size=BLOCK, pack_size=PACK)
        first = disk_image("rrrr", seed=40)
        kept = backup_image(store, "web1", {"vda": first})
        ceph_cluster.mon_command("osd pool set-quota", pool=pool, field="max_bytes", val=str(2 * MiB))   # below what it holds
        wait_for_pool_flag(ceph_cluster, pool, "full_quota", present=True)
        with pytest.raises(StoreFullError, match=f"pool {pool} is full.*set-quota {pool}"):
            backup_image(store, "web1", {"vda": disk_image("rrrrrrrr", seed=41)})
        assert [m.backup_id for m in store.list_backups()] == [kept.backup_id]
        assert read_back(store, kept, "vda") == first and verify_store(store).ok
        assert store.backend.list("writers") == []   # the failed writer let go of its lease
        after_clock_error()
        # GC works in a full pool: deletes, and small files (its lock, index files) are omap updates.
        assert collect_garbage(store, grace=timedelta(0)).problems == ()

        ceph_cluster.mon_command("osd pool set-quota", pool=pool, field="max_bytes", val="0")
        wait_for_pool_flag(ceph_cluster, pool, "full_quota", present=False)
        second = disk_image("rrrrrrrr", seed=41)
        latest = backup_image(store, "web1", {"vda": second})
        assert read_back(Store.open(url), latest, "vda") == second and verify_store(store).ok
        store.close()
    finally:
        ceph_cluster.mon_command("osd pool rm", pool=pool, pool2=pool, yes_i_really_really_mean_it=True)


def wait_for_pool_flag(cluster, pool: str, flag: str, present: bool, timeout: float = 60) -> None:
    """The monitors set a pool's full_quota flag from usage the manager reports every few seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pools = {p["pool_name"]: p for p in cluster.mon_command("osd dump")["pools"]}
        if (flag in pools[pool]["flags_names"].split(",")) == present:
            return
        time.sleep(0.5)
    raise AssertionError(f"pool {pool}: flag {flag} not {'set' if present else 'cleared'} in {timeout}s")


def test_cli_works_on_a_rados_store(ceph_cluster, rados_url, tmp_path):
    env = {**os.environ, "CAIRN_DATA_DIR": str(tmp_path / "data"), "CAIRN_STORE": rados_url, "COLUMNS": "400"}

    def cairn(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], check=False, env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    assert rados_url.split("?")[0] in cairn("store", "init", "--block-size", "256K", "--pack-size", "1M").stdout
    data = disk_image("rs", seed=21)
    with Store.open(rados_url) as store:
        manifest = backup_image(store, "web1", {"vda": data})
    assert json.loads(cairn("store", "verify", "--json").stdout)["ok"] is True
    cairn("restore", "disk", manifest.backup_id, "--to", str(tmp_path / "vda.raw"))
    assert (tmp_path / "vda.raw").read_bytes() == data
