"""Off-site copies into Ceph: a sync to radosgw cut half-way and resumed, and a sync policy that
pushes an appliance's backups into a RADOS pool on its schedule."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from backup_helpers import MiB
from store_helpers import backup_image, disk_image, read_back
from test_scheduler import FakeClock, scheduler, tick_and_wait, write_offline

from appliance.context import Appliance
from appliance.policies.service import SyncPolicy
from dedup import Store, open_replica, sync_store, verify_store

CAIRN = str(Path(sys.executable).with_name("cairn"))
BLOCK = 256 << 10
PACK = 2 * MiB


def test_a_sync_to_radosgw_cut_half_way_resumes_and_sends_only_what_is_missing(ceph_s3, tmp_path):
    source = Store.init(tmp_path / "src", block_size=BLOCK, pack_size=PACK)
    images = {"web1": disk_image("r" * 24, seed=1)}   # one backup: the cut falls inside it
    manifests = {vm: backup_image(source, vm, {"vda": data}) for vm, data in images.items()}
    everything = sync_store(source, open_replica(source, str(tmp_path / "measure"))).bytes_sent   # a full copy
    bucket = ceph_s3.unique("offsite")
    url = ceph_s3.s3_url(bucket)
    env = {**os.environ, **ceph_s3.s3_env(), "CAIRN_DATA_DIR": str(tmp_path / "data")}

    # The first run, slowed to 4 MiB/s, is killed once about half of it has arrived.
    cut = subprocess.Popen([CAIRN, "store", "sync", "--store", str(tmp_path / "src"), "--to", url,
                            "--bandwidth", "4M"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    arrived = wait_until_arrived(ceph_s3, bucket, everything // 2, cut)
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    arrived = stored_pack_bytes(ceph_s3, bucket)
    assert everything // 3 < arrived < everything, (arrived, everything)

    # The next run sends what is missing: everything less what arrived, give or take the pack
    # being filled at the cut (lost) and the map pages.
    resumed = subprocess.run([CAIRN, "store", "sync", "--store", str(tmp_path / "src"), "--to", url, "--json"],
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert set(report["copied"]) == {m.backup_id for m in manifests.values()}
    assert report["blocks_present"] > 0
    assert everything - arrived - PACK <= report["bytes_sent"] <= everything - arrived + 2 * PACK, \
        (report["bytes_sent"], everything, arrived)

    for name, value in ceph_s3.s3_env().items():
        os.environ[name] = value
    with Store.open(url) as copy:
        assert verify_store(copy).ok
        for vm, data in images.items():
            assert read_back(copy, copy.get_backup(manifests[vm].backup_id), "vda") == data


def stored_pack_bytes(cluster, bucket: str) -> int:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **cluster.s3)
    try:
        pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="store/packs/"))
    except s3.exceptions.NoSuchBucket:
        return 0   # the sync has not made it yet
    return sum(o["Size"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


def wait_until_arrived(cluster, bucket: str, nbytes: int, process: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the sync ended before the cut: {process.stderr.read().decode()}"
        arrived = stored_pack_bytes(cluster, bucket)
        if arrived >= nbytes:
            return arrived
        time.sleep(0.2)
    raise AssertionError(f"{nbytes} bytes did not arrive in {timeout}s")


def test_a_sync_policy_pushes_new_backups_into_rados_on_its_schedule(ceph_cluster, appliance: Appliance):
    target = ceph_cluster.rados_url(ceph_cluster.unique("offsite"))
    appliance.vms.create("web1", [16 * MiB])
    for n in range(4):
        write_offline(appliance, "web1", 0x5A + n, 3 * n * MiB)   # four blocks of data
    clock = FakeClock(appliance_clock_start())
    sched, policies = scheduler(appliance, clock)
    first = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": "web1"}).id, 240)
    policies.create(SyncPolicy(name="offsite", schedule="0 3 * * *", vms=["*"], target=target))

    clock.now += timedelta(hours=3)
    (job,) = tick_and_wait(appliance, sched)
    assert job.kind == "store.sync" and job.result["copied"] == [first.result["backup_id"]]

    write_offline(appliance, "web1", 0x77, 3 * MiB)
    second = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": "web1"}).id, 240)
    clock.now += timedelta(days=1)
    (job,) = tick_and_wait(appliance, sched)
    assert job.result["copied"] == [second.result["backup_id"]]
    # Only the changed block and the map's pages went; the three others were there already.
    assert job.result["blocks_present"] >= 3 and job.result["blocks_sent"] <= 3
    with Store.open(target) as copy:
        assert [m.backup_id for m in copy.list_backups("web1")] == [first.result["backup_id"],
                                                                    second.result["backup_id"]]
        assert verify_store(copy).ok


def appliance_clock_start():
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(hour=0, minute=30, second=0, microsecond=0)
