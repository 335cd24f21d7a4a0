"""Store verify and GC as jobs through the API; an interrupted verify resumes after a restart."""
from __future__ import annotations

import subprocess

from backup_helpers import MiB
from fastapi.testclient import TestClient
from store_helpers import block_ids, block_pack, flip_byte

from appliance.context import Appliance
from appliance.jobs.records import JobRecord

JOB_TIMEOUT = 240


def finished(api_client: TestClient, appliance: Appliance, job: dict) -> dict:
    appliance.jobs.wait(job["id"], JOB_TIMEOUT)
    return api_client.get(f"/api/v1/jobs/{job['id']}").json()


def test_verify_and_gc_jobs_report_and_record_damage(api_client: TestClient, appliance: Appliance):
    appliance.vms.create("st", [16 * MiB])
    disk = appliance.vms.spec("st").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5e 0 6M", disk], check=True, capture_output=True)
    backup = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": "st"}).id, JOB_TIMEOUT)
    backup_id = backup.result["backup_id"]

    r = api_client.post("/api/v1/store/verify-jobs", json={})
    assert r.status_code == 202 and r.json()["resource"].startswith("store:")
    clean = finished(api_client, appliance, r.json())
    assert clean["state"] == "succeeded" and clean["result"]["bad_chunks"] == []
    assert clean["result"]["chunks_checked"] >= 1

    store = appliance.store
    bad = block_ids(store, store.get_backup(backup_id), "vda")[0]
    flip_byte(block_pack(store, bad), offset=store.blocks.locate(bad)[1].offset + 5)
    damaged = finished(api_client, appliance, api_client.post("/api/v1/store/verify-jobs").json())
    assert damaged["state"] == "succeeded" and len(damaged["result"]["bad_chunks"]) == 1
    assert api_client.get(f"/api/v1/backups/{backup_id}").json()["status"] == "ok"
    assert appliance.backups.get(backup_id).damage, "the catalog names what is wrong with the backup"
    (event,) = api_client.get("/api/v1/events", params={"filter": "kind:eq:verify.damage"}).json()
    assert event["severity"] == "error" and backup_id in event["data"]["damaged_backups"]

    gc = finished(api_client, appliance, api_client.post("/api/v1/store/gc-jobs", json={"dry_run": True}).json())
    # At least a block and a map page.
    assert gc["state"] == "succeeded" and gc["result"]["dry_run"] and gc["result"]["chunks_referenced"] >= 2

    assert api_client.post("/api/v1/store/verify-jobs", json={"sample_percent": 0}).status_code == 422
    assert api_client.post("/api/v1/store/gc-jobs", json={"grace_seconds": -1}).status_code == 422
    r = api_client.post("/api/v1/jobs", json={"kind": "store.gc", "params": {"dry_run": "perhaps"}})
    assert r.status_code == 422 and "dry_run" in r.json()["error"]["message"]


def test_an_interrupted_verify_job_resumes_on_restart(appliance: Appliance):
    appliance.vms.create("rs", [8 * MiB])
    appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": "rs"}).id, JOB_TIMEOUT)
    dead = _dead_pid()
    # What a process killed inside the verify step leaves in the catalog.
    job = JobRecord(id="interrupted01", kind="store.verify", resource=f"store:{appliance.store.path}",
                    state="running", params={}, limits={}, memo={}, runner_pid=dead,
                    steps=[{"name": "verify", "state": "running", "error": None}])
    with appliance.catalog.begin() as s:
        s.add(job)
    assert appliance.jobs.recover() == ["interrupted01"]
    resumed = appliance.jobs.wait("interrupted01", JOB_TIMEOUT)
    assert resumed.state == "succeeded" and resumed.result["bad_chunks"] == []
    assert resumed.steps[0]["state"] == "done"
    assert appliance.jobs.recover() == [], "taken over once"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
