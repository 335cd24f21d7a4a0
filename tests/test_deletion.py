"""Deletion protection: preview, recycle bin with restore, purge after the delay, never, immediate."""
from __future__ import annotations

import subprocess
from datetime import datetime, timedelta
from pathlib import Path

from backup_helpers import MiB, same_content
from fastapi.testclient import TestClient

from appliance.context import Appliance
from appliance.policies.scheduler import Scheduler
from restore import restore_disk

JOB_TIMEOUT = 240


def offline_backup(appliance: Appliance, vm: str) -> str:
    job = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": vm}).id, JOB_TIMEOUT)
    assert job.state == "succeeded", job.error
    return job.result["backup_id"]


def test_a_deleted_backup_waits_in_the_recycle_bin_and_comes_back_whole(api_client: TestClient,
                                                                         appliance: Appliance, tmp_path: Path):
    appliance.vms.create("keep", [16 * MiB])
    disk = appliance.vms.spec("keep").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 1M 2M", disk], check=True, capture_output=True)
    backup_id = offline_backup(appliance, "keep")

    preview = api_client.delete(f"/api/v1/backups/{backup_id}", params={"dry_run": True}).json()
    assert preview["mode"] == "delayed" and not preview["deleted"] and preview["frees_bytes"] > 0
    assert any("backup " + backup_id in line for line in preview["takes"])
    assert any("reads the disks in full" in line for line in preview["takes"])
    assert api_client.get(f"/api/v1/backups/{backup_id}").json()["status"] == "ok", "a preview changes nothing"

    gone = api_client.delete(f"/api/v1/backups/{backup_id}").json()
    assert gone["deleted"] and gone["recycle_id"]
    assert api_client.get(f"/api/v1/backups/{backup_id}").json()["status"] == "recycled"
    assert api_client.delete(f"/api/v1/backups/{backup_id}").status_code == 409, "already in the bin"
    (entry,) = api_client.get("/api/v1/recycle-bin", params={"filter": "kind:eq:backup"}).json()
    assert entry["name"] == backup_id
    assert offline_backup(appliance, "keep") != backup_id
    assert appliance.backups.get(offline_backup(appliance, "keep")).parent != backup_id

    back = api_client.post(f"/api/v1/recycle-bin/{gone['recycle_id']}/restore")
    assert back.status_code == 200 and api_client.get("/api/v1/recycle-bin").json() == []
    assert api_client.get(f"/api/v1/backups/{backup_id}").json()["status"] == "ok"
    ref, out = tmp_path / "ref.raw", tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", disk, str(ref)], check=True)
    restore_disk(appliance.store, backup_id, "vda", out)
    assert same_content(ref, out)


def test_the_bin_is_purged_when_the_delay_is_over(api_client: TestClient, appliance: Appliance):
    appliance.vms.create("purge", [8 * MiB])
    backup_id = offline_backup(appliance, "purge")
    recycled = api_client.delete(f"/api/v1/backups/{backup_id}").json()
    clock = _Clock(recycled["purge_at"])
    sched = Scheduler.for_appliance(appliance, clock)
    clock.shift(-timedelta(seconds=1))
    sched.tick()
    assert api_client.get("/api/v1/recycle-bin").json() != [], "not yet"
    clock.shift(timedelta(seconds=2))
    sched.tick()
    assert api_client.get("/api/v1/recycle-bin").json() == []
    assert api_client.get(f"/api/v1/backups/{backup_id}").status_code == 404
    assert backup_id not in {m.backup_id for m in appliance.store.list_backups("purge")}
    events = api_client.get("/api/v1/events", params={"filter": "kind:eq:recycle.purged"}).json()
    assert [e["resource"] for e in events] == [f"backup:{backup_id}"]


def test_rules_never_and_immediate_and_bad_rules(api_client: TestClient, appliance: Appliance):
    appliance.vms.create("rules", [8 * MiB])
    backup_id = offline_backup(appliance, "rules")
    assert api_client.get("/api/v1/deletion-rules").json()["backup"] == {"mode": "delayed",
                                                                          "delay_seconds": 7 * 24 * 3600}
    assert api_client.put("/api/v1/deletion-rules/backup", json={"mode": "never"}).status_code == 200
    r = api_client.delete(f"/api/v1/backups/{backup_id}")
    assert r.status_code == 409 and "never" in r.json()["error"]["message"]
    assert "switched off" in api_client.delete(f"/api/v1/backups/{backup_id}",
                                               params={"dry_run": True}).json()["takes"][0]
    api_client.put("/api/v1/deletion-rules/backup", json={"mode": "immediate"})
    assert api_client.delete(f"/api/v1/backups/{backup_id}").json()["deleted"]
    assert appliance.store.list_backups("rules") == [] and api_client.get("/api/v1/recycle-bin").json() == []

    assert api_client.put("/api/v1/deletion-rules/backup", json={"mode": "delayed"}).status_code == 422
    assert api_client.put("/api/v1/deletion-rules/backup", json={"mode": "soon"}).status_code == 422
    assert api_client.put("/api/v1/deletion-rules/vm-disk", json={"mode": "never"}).status_code == 404
    assert api_client.delete("/api/v1/backups/20990101T000000Z-dead").status_code == 404
    assert api_client.post("/api/v1/recycle-bin/nothing/restore").status_code == 404


def test_a_policy_deleted_with_delay_is_restored_as_it_was(api_client: TestClient, appliance: Appliance):
    appliance.vms.create("pol", [8 * MiB])
    created = api_client.post("/api/v1/policies", json={"kind": "backup", "name": "daily", "schedule": "0 1 * * *",
                                                         "vms": ["pol"]}).json()
    preview = api_client.delete("/api/v1/policies/daily", params={"dry_run": True}).json()
    assert preview["mode"] == "immediate" and "selects 1 VM(s) today: pol" in preview["takes"][1]
    api_client.put("/api/v1/deletion-rules/policy", json={"mode": "delayed", "delay_seconds": 60})
    gone = api_client.delete("/api/v1/policies/daily").json()
    assert api_client.get("/api/v1/policies/daily").status_code == 404
    api_client.post(f"/api/v1/recycle-bin/{gone['recycle_id']}/restore")
    assert api_client.get("/api/v1/policies/daily").json() == created


class _Clock:
    def __init__(self, iso: str):
        self.now = datetime.fromisoformat(iso)

    def shift(self, by: timedelta) -> None:
        self.now += by

    def __call__(self):
        return self.now
