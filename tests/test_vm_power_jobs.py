"""A VM's start and stop are jobs (vm.start, vm.stop; appliance/jobs/kinds/power.py): from the API
and the CLI alike each leaves a finished job in the VM's history, with messages that say where it
started and how it stopped; the answers stay what they were, with the job's id. A start of a VM
the caller does not see makes no job; one the VM refuses is a failed job with the error as it
was. A start asked for while a backup of the VM runs waits for it, and both are whole."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from backup_helpers import wait_serial
from conftest import TEST_PASSWORD
from fastapi.testclient import TestClient
from guest.harness import MiB
from job_helpers import job_result
from restore_helpers import same_image
from sqlalchemy import func, select

from appliance.access.roles import Role
from appliance.api.app import create_app
from appliance.context import Appliance
from appliance.jobs.records import JobRecord

CAIRN = str(Path(sys.executable).with_name("cairn"))
GUEST_APPEND = "console=ttyS0 quiet cairn.mode=idle"


def history(client: TestClient, vm: str) -> list[dict]:
    """The VM's jobs, newest first, as the console's VM page asks for them."""
    answer = client.get("/api/v1/jobs", params={"sort": "-created_at", "filter": f"resource:eq:vm:{vm}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def messages(client: TestClient, job_id: str) -> dict[str, dict]:
    """The job's task log: its events by kind."""
    answer = client.get("/api/v1/events", params={"sort": "id", "filter": f"job_id:eq:{job_id}"})
    assert answer.status_code == 200, answer.text
    return {e["kind"]: e for e in answer.json()}


def finished_job(client: TestClient, vm: str, job_id: str, kind: str) -> dict[str, dict]:
    """The job the answer named is the VM's newest, succeeded, of this kind: its task log."""
    newest = history(client, vm)[0]
    assert (newest["id"], newest["kind"], newest["state"]) == (job_id, kind, "succeeded"), newest
    assert [s["state"] for s in newest["steps"]] == ["done"]
    log = messages(client, job_id)
    assert {"job.started", "job.succeeded"} <= set(log), log
    return log


def jobs_of_kind(appliance: Appliance, kind: str) -> int:
    with appliance.catalog() as s:
        return s.scalar(select(func.count()).select_from(JobRecord).where(JobRecord.kind == kind)) or 0


def test_a_start_and_a_stop_through_the_api_are_jobs_in_the_vms_history(appliance: Appliance,
                                                                          api_client: TestClient, guest_kernel):
    body = {"name": "web", "disks": ["64M"], "kernel": str(guest_kernel.kernel), "initrd": str(guest_kernel.initrd),
            "append": GUEST_APPEND}
    assert api_client.post("/api/v1/vms", json=body).status_code == 201
    started = api_client.post("/api/v1/vms/web/start")
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "running" and started.json()["pid"]
    log = finished_job(api_client, "web", started.json()["job_id"], "vm.start")
    assert f"VM web started on host local (QEMU pid {started.json()['pid']})" == log["vm.started"]["message"]
    wait_serial(appliance, "web", "CAIRN: READY")

    stopped = api_client.post("/api/v1/vms/web/stop", json={"timeout": 120})
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["state"], stopped.json()["how"]) == ("stopped", "powerdown")
    log = finished_job(api_client, "web", stopped.json()["job_id"], "vm.stop")
    assert "asked the guest of VM web to shut down (ACPI power button)" in log["vm.stopping"]["message"]
    assert log["vm.stopped"]["message"].endswith(": the guest shut down"), log["vm.stopped"]
    assert log["vm.stopped"]["severity"] == "info"
    job = api_client.get(f"/api/v1/jobs/{stopped.json()['job_id']}").json()
    assert (job["result"]["how"], job["result"]["state"]) == ("powerdown", "stopped")
    assert [j["kind"] for j in history(api_client, "web")] == ["vm.stop", "vm.start"]


def test_a_stop_of_a_guest_that_ignores_the_power_button_says_in_its_job_how_it_stopped(
        appliance: Appliance, api_client: TestClient, guest_kernel):
    appliance.vms.create("deaf", [64 * MiB], kernel=str(guest_kernel.kernel), initrd=str(guest_kernel.initrd),
                         append=f"{GUEST_APPEND} cairn.acpi=off")
    assert api_client.post("/api/v1/vms/deaf/start").status_code == 200
    wait_serial(appliance, "deaf", "CAIRN: READY")
    stopped = api_client.post("/api/v1/vms/deaf/stop", json={"timeout": 2})
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["state"], stopped.json()["how"]) == ("stopped", "quit")
    said = finished_job(api_client, "deaf", stopped.json()["job_id"], "vm.stop")["vm.stopped"]
    assert said["severity"] == "warning"
    assert "QEMU was ended without the guest shutting down (it did not shut down within 2 s" in said["message"]
    # Forced at once, it says so too; a stop of a stopped VM says it was not running.
    assert api_client.post("/api/v1/vms/deaf/start").status_code == 200
    forced = api_client.post("/api/v1/vms/deaf/stop", json={"force": True})
    assert forced.json()["how"] == "quit"
    said = finished_job(api_client, "deaf", forced.json()["job_id"], "vm.stop")["vm.stopped"]
    assert said["message"].endswith("QEMU was ended without the guest shutting down (forced, as asked)")
    again = api_client.post("/api/v1/vms/deaf/stop").json()
    assert again["how"] == "already-stopped"
    said = finished_job(api_client, "deaf", again["job_id"], "vm.stop")["vm.stopped"]
    assert said["message"].endswith(": it was not running") and "vm.stopping" not in messages(api_client, again["job_id"])


def test_a_start_and_a_stop_from_the_cli_are_jobs(appliance: Appliance, appliance_data_dir: Path):
    """The local CLI runs the job in its own process, as the API does in the server's."""
    appliance.vms.create("quiet", [MiB])   # no OS: SeaBIOS finds nothing to boot
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CAIRN_") or k == "CAIRN_CATALOG_URL"},
           "CAIRN_DATA_DIR": str(appliance_data_dir)}

    def cairn(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([CAIRN, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    started = json.loads(cairn("vm", "start", "quiet", "--json").stdout)
    assert started["state"] == "running"
    stopped = json.loads(cairn("vm", "stop", "quiet", "--force", "--json").stdout)
    job_id = stopped["job_id"]
    assert (stopped["state"], stopped["how"]) == ("stopped", "quit")
    said = " ".join(cairn("vm", "stop", "quiet").stdout.split())   # as one line, however it was wrapped
    again = re.fullmatch(r"quiet: stopped \(it was not running\); job (\w+)", said)
    assert again, said
    jobs = {j["id"]: j for j in json.loads(cairn("job", "list", "--json").stdout)}
    assert (jobs[started["job_id"]]["kind"], jobs[started["job_id"]]["state"]) == ("vm.start", "succeeded")
    assert (jobs[job_id]["kind"], jobs[job_id]["state"]) == ("vm.stop", "succeeded")
    assert jobs[job_id]["result"]["how"] == "quit"
    assert jobs[again.group(1)]["result"]["how"] == "already-stopped"
    client = TestClient(create_app(appliance))
    appliance.users.create("ops", TEST_PASSWORD, Role.ADMIN)
    token = client.post("/api/v1/auth/login", json={"username": "ops", "password": TEST_PASSWORD}).json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    assert "started on host local" in messages(client, started["job_id"])["vm.started"]["message"]
    assert "(forced, as asked)" in messages(client, job_id)["vm.stopped"]["message"]
    assert [j["kind"] for j in history(client, "quiet")] == ["vm.stop", "vm.stop", "vm.start"]


def test_a_start_the_caller_may_not_make_makes_no_job_and_one_the_vm_refuses_fails(
        appliance: Appliance, api_client: TestClient, operator_client: TestClient):
    appliance.vms.create("theirs", [MiB])   # no owner: an admin's to give
    appliance.users.create("bob", TEST_PASSWORD, Role.OPERATOR)
    assert api_client.put("/api/v1/vms/theirs/access", json={"owner": "bob"}).status_code == 200
    for client, vm in ((operator_client, "theirs"), (api_client, "nosuch"), (operator_client, "nosuch")):
        for action in ("start", "stop"):
            refused = client.post(f"/api/v1/vms/{vm}/{action}")
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "NotFoundError", refused.text
    refused = api_client.post("/api/v1/jobs", json={"kind": "vm.start", "params": {"vm": "nosuch"}})
    assert refused.status_code == 404 and "nosuch" in refused.json()["error"]["message"]
    assert jobs_of_kind(appliance, "vm.start") == jobs_of_kind(appliance, "vm.stop") == 0

    # The VM refuses a second start: a failed job, and the error the start raised, as it was.
    assert api_client.post("/api/v1/vms/theirs/start").status_code == 200
    again = api_client.post("/api/v1/vms/theirs/start")
    assert again.status_code == 409 and "already running" in again.json()["error"]["message"], again.text
    failed = history(api_client, "theirs")[0]
    assert (failed["kind"], failed["state"]) == ("vm.start", "failed") and "already running" in failed["error"]
    assert api_client.post("/api/v1/vms/theirs/stop", json={"force": True}).json()["state"] == "stopped"


def test_a_start_asked_for_while_a_backup_of_the_vm_runs_waits_for_it(appliance: Appliance,
                                                                       api_client: TestClient, tmp_path: Path):
    appliance.vms.create("busy", [256 * MiB])
    disk = appliance.vms.spec("busy").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5c 0 {128 * MiB}", disk], check=True,
                   capture_output=True)
    backup = api_client.post("/api/v1/vms/busy/backups", json={"full": True})
    assert backup.status_code == 202, backup.text
    started = api_client.post("/api/v1/vms/busy/start")
    assert started.status_code == 200 and started.json()["state"] == "running", started.text
    backup_id = job_result(api_client, backup)["backup_id"]
    backup_job = api_client.get(f"/api/v1/jobs/{backup.json()['id']}").json()
    start_job = api_client.get(f"/api/v1/jobs/{started.json()['job_id']}").json()
    assert start_job["created_at"] < backup_job["finished_at"] <= start_job["started_at"], (backup_job, start_job)
    # Nothing lost: the VM ran, and the backup holds the disk as it is (SeaBIOS writes nothing).
    assert api_client.get("/api/v1/vms/busy").json()["state"] == "running"
    assert api_client.post("/api/v1/vms/busy/stop", json={"force": True}).json()["how"] == "quit"
    target = tmp_path / "vda.raw"
    job_result(api_client, api_client.post(f"/api/v1/backups/{backup_id}/disks/vda/restore", json={"target": str(target)}))
    assert same_image(disk, target)
