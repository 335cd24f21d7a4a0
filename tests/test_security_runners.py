"""No VM or job is wedged for good: a stop's timeout is bounded and a force-stop interrupts a
graceful one in progress; a job or backup whose recorded runner is gone is taken over even when
its pid now belongs to another process (after a reboot, or once pids wrap)."""
from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from appliance.backups.records import BackupRecord
from appliance.catalog.base import utcnow
from appliance.context import Appliance
from appliance.jobs.records import JobRecord
from appliance.process import start_of

MiB = 1 << 20
INIT = 1   # a pid that is alive, and certainly not the runner of anything Cairn recorded


def test_a_force_stop_interrupts_a_graceful_one(appliance: Appliance, api_client: TestClient, guest_kernel):
    # A guest that ignores the power button: a graceful stop can only wait for its timeout.
    appliance.vms.create("deaf", [64 * MiB], kernel=str(guest_kernel.kernel), initrd=str(guest_kernel.initrd),
                         append="console=ttyS0 quiet cairn.mode=idle cairn.acpi=off")
    assert api_client.post("/api/v1/vms/deaf/start").status_code == 200
    r = api_client.post("/api/v1/vms/deaf/stop", json={"timeout": 1e12})
    assert r.status_code == 422, r.text
    graceful: list = []
    waiting = threading.Thread(target=lambda: graceful.append(
        api_client.post("/api/v1/vms/deaf/stop", json={"timeout": 300})))
    waiting.start()
    try:
        deadline = time.monotonic() + 30
        while not appliance.driver.paths("deaf").stopping_file.exists():   # the graceful stop is waiting
            assert time.monotonic() < deadline and waiting.is_alive()
            time.sleep(0.1)
        started = time.monotonic()
        forced = api_client.post("/api/v1/vms/deaf/stop", json={"force": True})
        assert forced.status_code == 200, forced.text
        assert forced.json()["state"] == "stopped" and time.monotonic() - started < 60
    finally:
        waiting.join(120)
    assert not waiting.is_alive() and graceful[0].status_code == 200, graceful
    assert graceful[0].json()["state"] == "stopped"
    assert api_client.get("/api/v1/vms/deaf").json()["state"] == "stopped"
    # Both are vm.stop jobs: the forced one cut the graceful one's wait short, which its task log says.
    cut = api_client.get("/api/v1/events", params={"filter": f"job_id:eq:{graceful[0].json()['job_id']}"}).json()
    said = {e["kind"]: e["message"] for e in cut}
    assert said["job.cut_short"] == f"cut short by vm.stop job {forced.json()['job_id']}"
    assert "the wait for the guest was cut short" in said["vm.stopped"] and graceful[0].json()["how"] == "quit"


def job_claimed_by(appliance: Appliance, pid: int, start: str | None) -> str:
    job_id = uuid.uuid4().hex[:16]
    with appliance.catalog.begin() as s:
        s.add(JobRecord(id=job_id, kind="store.gc", resource=f"store:{appliance.store.location}", state="queued",
                        params={"dry_run": True}, limits={}, memo={}, steps=[{"name": "gc", "state": "pending",
                                                                              "error": None}],
                        runner_pid=pid, runner_start=start, created_at=utcnow()))
    return job_id


def test_a_job_whose_runner_is_gone_is_recovered_though_its_pid_lives(appliance: Appliance):
    before_reboot = job_claimed_by(appliance, INIT, "another-boot/42")
    before_upgrade = job_claimed_by(appliance, INIT, None)   # recorded by a version without starts
    with subprocess.Popen(["sleep", "60"]) as runner:
        try:
            running = job_claimed_by(appliance, runner.pid, start_of(runner.pid))
            assert sorted(appliance.jobs.recover()) == sorted([before_reboot, before_upgrade])
            assert appliance.jobs.get(running).state == "queued"   # its runner is really there
        finally:
            runner.kill()
    assert appliance.jobs.recover() == [running]
    for job in (before_reboot, before_upgrade, running):
        assert appliance.jobs.wait(job, 60).state == "succeeded"


@pytest.mark.sqlite_only(
    reason="on PostgreSQL another boot's runner may be another node's (jobs.nodes.process_gone): test_nodes judges it")
def test_a_backup_whose_runner_is_gone_is_interrupted_though_its_pid_lives(appliance: Appliance):
    appliance.vms.create("web", [8 * MiB])
    with appliance.catalog.begin() as s:
        s.add(BackupRecord(id="20240101T000000Z-dead", vm_name="web", store=appliance.store.location, kind="full",
                           status="running", notes=[], runner_pid=INIT, runner_start="another-boot/42"))
    rec = appliance.backups.begin(appliance.vms.spec("web"))
    assert rec.status == "running"
    old = appliance.backups.get("20240101T000000Z-dead")
    assert old.status == "failed" and "interrupted" in old.error
