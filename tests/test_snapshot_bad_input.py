"""Snapshot requests that cannot be served get a clear error and change nothing: not the tree,
not a file of the VM."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from backup_helpers import MiB, run
from snapshot_helpers import qemu_io_write

from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.kinds.backup import backup_steps
from appliance.jobs.params import BackupParams
from appliance.jobs.plan import JobKind, JobPlan, Step, StepContext
from appliance.jobs.resources import vm_resource


def state(appliance: Appliance, vm: str) -> tuple[dict, dict[str, int]]:
    """The tree as recorded and every file of the VM with its modification time."""
    folder = Path(appliance.vms.spec(vm).disks[0].path).parent
    return appliance.snapshots.tree(vm).to_dict(), {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_revert_to_a_snapshot_of_another_vm_or_one_that_misses_a_disk(appliance: Appliance):
    appliance.vms.create("one", [1 * MiB, 1 * MiB])
    appliance.vms.create("two", [1 * MiB])
    other = run(appliance.snapshots.create("two", "theirs"))
    run(appliance.snapshots.create("one", "ours"))
    # A layer of vda alone, made behind Cairn's back and adopted by a repair: a snapshot of one disk.
    vda = appliance.vms.spec("one").disks[0].path
    top = str(Path(vda).with_name("by-hand.qcow2"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", vda, top], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", top, top + ".top"], check=True)
    with appliance.catalog.begin() as s:
        appliance.vms.point_disks(s, "one", {"vda": top + ".top"})
    run(appliance.snapshots.check("one", fix=True))
    adopted = next(s for s in appliance.snapshots.tree("one").snapshots.values() if s.name.startswith("adopted-"))
    before = state(appliance, "one")

    with pytest.raises(NotFoundError, match=f"VM one has no snapshot '{other.id}'"):
        run(appliance.snapshots.revert("one", other.id))
    with pytest.raises(ConflictError, match="does not cover disk vdb"):
        run(appliance.snapshots.revert("one", adopted.id))
    assert state(appliance, "one") == before


def test_no_snapshot_change_while_a_backup_runs(appliance: Appliance):
    """Snapshot jobs on a VM wait while its backup job runs (the job queue keeps them apart, not
    a check in the snapshot service), then run in the order they were asked for."""
    appliance.vms.create("busy", [4 * MiB])
    qemu_io_write(appliance.vms.spec("busy").disks[0].path, 0x5A, 0, 1 * MiB)
    run(appliance.snapshots.create("busy", "s1"))
    copying, go_on = threading.Event(), threading.Event()

    async def hold(_: StepContext) -> None:   # the backup is claimed, its copy not yet done
        copying.set()
        await asyncio.to_thread(go_on.wait, 60)
    jobs = appliance.jobs
    jobs.kinds["held-backup"] = JobKind(BackupParams, lambda p: JobPlan(vm_resource(p.vm), [
        *backup_steps(appliance, p.vm, p.full, p.options())[:1], Step("hold", hold),
        *backup_steps(appliance, p.vm, p.full, p.options())[1:]]))
    backup = jobs.submit("held-backup", {"vm": "busy"})
    assert copying.wait(60)
    before = state(appliance, "busy")
    asked = [jobs.submit("snapshot.revert", {"vm": "busy", "snapshot": "s1"}),
             jobs.submit("snapshot.delete", {"vm": "busy", "snapshot": "s1", "via": "pull"}),
             jobs.submit("snapshot.create", {"vm": "busy", "name": "s2"})]
    time.sleep(1)
    assert [jobs.get(j.id).state for j in asked] == ["queued"] * 3
    assert state(appliance, "busy") == before
    go_on.set()
    backup = jobs.wait(backup.id, 120)
    done = [jobs.wait(j.id, 120) for j in asked]
    assert backup.state == "succeeded" and [j.state for j in done] == ["succeeded"] * 3, [j.error for j in done]
    assert backup.finished_at <= done[0].started_at and done[0].finished_at <= done[1].started_at
    assert [s.name for s in appliance.snapshots.tree("busy").snapshots.values()] == ["s2"]


def test_names_that_exist_and_requests_that_do_not_parse(appliance: Appliance, appliance_data_dir: Path, api_client):
    appliance.vms.create("named", [1 * MiB])
    run(appliance.snapshots.create("named", "daily"))
    before = state(appliance, "named")
    with pytest.raises(ConflictError, match="already has a snapshot named 'daily'"):
        run(appliance.snapshots.create("named", "daily"))
    base = "/api/v1/vms/named/snapshots"
    assert api_client.post(base, json={"name": "daily"}).status_code == 409
    assert api_client.request("DELETE", f"{base}/daily", json={"via": "sideways"}).status_code == 422
    assert api_client.request("DELETE", f"{base}/daily", json={"rate_limit": 0}).status_code == 422
    assert api_client.request("DELETE", f"{base}/nope").status_code == 404
    assert api_client.post("/api/v1/vms/nobody/snapshots", json={"name": "x"}).status_code == 404
    stopped = api_client.post(base, json={"name": "m", "memory": True})
    assert stopped.status_code == 409 and "no memory state to save" in stopped.text
    disks_only = api_client.post(f"{base}/daily/revert", json={"memory": True})
    assert disks_only.status_code == 409 and "has no memory state" in disks_only.text

    cairn = Path(sys.executable).with_name("cairn")
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance_data_dir)}
    for args in (["create", "named", "--name", "daily"], ["delete", "named", "daily", "--via", "sideways"],
                 ["delete", "named", "daily", "--rate", "fast"]):
        done = subprocess.run([str(cairn), "snapshot", *args], env=env, check=False, capture_output=True, text=True)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done
        assert ("already has" in done.stderr or "--via" in done.stderr or "size" in done.stderr.lower()), done.stderr
    assert state(appliance, "named") == before
