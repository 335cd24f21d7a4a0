"""Backups as jobs, with a real guest: through the API, undone by a later failing step,
cancelled mid-copy, and the appliance killed mid-job then restarted.

Each test ends with a backup whose restore equals what the guest's disk held."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backup_helpers import (
    MiB,
    boot_guest_vm,
    reference_copy,
    run,
    same_content,
    write_pattern,
)
from fastapi.testclient import TestClient

from appliance.backups.records import BackupRecord
from appliance.context import Appliance
from appliance.jobs.kinds.backup import backup_steps
from appliance.jobs.params import BackupParams
from appliance.jobs.plan import JobKind, JobPlan, Step, StepContext
from appliance.jobs.resources import vm_resource
from restore import restore_disk

JOB_TIMEOUT = 240   # TCG guests on a shared 2-core machine


def backup_restores_exactly(appliance: Appliance, vm: str, tmp_path: Path) -> dict:
    """Pause the guest, back it up as a job, copy its disk as it still is, resume; compare the restore.

    The copy comes after the backup: a backup repairs what an interrupted one left in QEMU (its
    NBD server among it), which the copy needs free."""
    refdir = tmp_path / f"ref-{time.monotonic_ns()}"
    refdir.mkdir()
    run(appliance.driver.pause(vm))
    try:
        job = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": vm}).id, JOB_TIMEOUT)

        async def copy() -> None:
            async with appliance.driver.session(vm) as s:
                await reference_copy(s, "vda", refdir / "vda.raw", refdir / "ref.sock")
        run(copy())
    finally:
        run(appliance.driver.resume(vm))
    assert job.state == "succeeded", job.error
    restored = refdir / "restored.raw"
    restore_disk(appliance.store, job.result["backup_id"], "vda", restored)
    assert same_content(refdir / "vda.raw", restored)
    return job.result


def no_trace_of(appliance: Appliance, backup_id: str, vm: str) -> None:
    with appliance.catalog() as s:
        assert s.get(BackupRecord, backup_id) is None
    assert backup_id not in {m.backup_id for m in appliance.store.list_backups(vm)}
    assert backup_id not in {d.backup_id for d in appliance.store.backup_dirs(vm)}


def test_backup_job_through_the_api(api_client: TestClient, appliance: Appliance, guest_kernel, tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "apivm", [128 * MiB])
    run(write_pattern(appliance, "apivm", "vda", 0x5c, 3 * MiB, MiB))
    r = api_client.post("/api/v1/vms/apivm/backups", json={"full": True})
    assert r.status_code == 202 and r.json()["kind"] == "backup" and r.json()["resource"] == "vm:apivm"
    job_id = r.json()["id"]
    with api_client.stream("GET", "/api/v1/events/stream", params={"job": job_id}) as stream:
        events = [line.removeprefix("event: ") for line in stream.iter_lines() if line.startswith("event: ")]
    assert events[-1] == "job.end"
    job = api_client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job["error"]
    assert [s["state"] for s in job["steps"]] == ["done", "done", "done"]
    backup = api_client.get(f"/api/v1/backups/{job['result']['backup_id']}").json()
    assert backup["status"] == "ok" and backup["kind"] == "full"
    kinds = [e["kind"] for e in api_client.get("/api/v1/events", params={"filter": f"job_id:eq:{job_id}",
                                                                       "sort": "id"}).json()]
    assert kinds == ["job.started", "backup.done", "job.succeeded"]

    assert api_client.post("/api/v1/vms/ghost/backups").status_code == 404
    r = api_client.post("/api/v1/jobs", json={"kind": "backup", "params": {"vm": "apivm", "fulll": True}})
    assert r.status_code == 422 and "fulll" in r.json()["error"]["message"]
    assert api_client.get("/api/v1/jobs/nope").status_code == 404
    assert api_client.get("/api/v1/events/stream", params={"job": "nope"}).status_code == 404
    assert api_client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409
    backup_restores_exactly(appliance, "apivm", tmp_path)


def test_a_failing_later_step_undoes_the_backup(appliance: Appliance, guest_kernel, tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "undo", [128 * MiB])

    async def explode(_: StepContext) -> None:
        raise RuntimeError("the step after the copy failed")
    appliance.jobs.kinds["backup-then-fail"] = JobKind(BackupParams, lambda p: JobPlan(
        vm_resource(p.vm), [*backup_steps(appliance, p.vm, p.full, p.options()), Step("explode", explode)]))
    job = appliance.jobs.wait(appliance.jobs.submit("backup-then-fail", {"vm": "undo"}).id, JOB_TIMEOUT)
    assert job.state == "failed" and "the step after the copy failed" in job.error
    assert [s["state"] for s in job.steps] == ["undone", "undone", "done", "failed"]
    assert job.memo["backup_id"]
    no_trace_of(appliance, job.memo["backup_id"], "undo")
    assert appliance.store.list_backups("undo") == []

    run(write_pattern(appliance, "undo", "vda", 0x42, 5 * MiB, 256 << 10))
    result = backup_restores_exactly(appliance, "undo", tmp_path)
    assert result["kind"] == "full"


def test_a_claim_cut_short_once_its_record_is_made_leaves_no_record(appliance: Appliance, monkeypatch):
    """The claim remembers its backup id before it makes the record. It used to remember it
    after: a node killed in between left a running record that no undo knew of, and the node
    that took over saw a failed backup where the job had left none (test_nodes_takeover)."""
    appliance.vms.create("cut", [16 * MiB])
    make_record = appliance.backups.begin

    def make_record_then_die(*args, **kwargs):
        make_record(*args, **kwargs)
        raise RuntimeError("killed once the record was made")
    monkeypatch.setattr(appliance.backups, "begin", make_record_then_die)
    job = appliance.jobs.wait(appliance.jobs.submit("backup", {"vm": "cut"}).id, JOB_TIMEOUT)
    assert job.state == "failed" and "killed once the record was made" in job.error
    assert job.steps[0]["state"] == "undone", job.steps
    no_trace_of(appliance, job.memo["backup_id"], "cut")
    assert appliance.backups.list(vm="cut") == []


def test_cancel_mid_copy_leaves_nothing_and_the_next_backup_works(appliance: Appliance, guest_kernel,
                                                                  tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "cancelme", [512 * MiB])
    for n in range(6):
        run(write_pattern(appliance, "cancelme", "vda", 0x60 + n, (120 + 64 * n) * MiB, 48 * MiB))
    # Cancel on the copy's first progress report, as it is announced: polling the stored progress
    # can see it too late on a fast machine, after the copy has finished.
    with appliance.jobs.events.listen() as feed:
        job = appliance.jobs.submit("backup", {"vm": "cancelme", "full": True})
        while not ((e := feed.get(timeout=JOB_TIMEOUT))["job_id"] == job.id and e["kind"] == "job.progress"
                   and e["data"]["progress"] > 0.06):
            pass
        appliance.jobs.cancel(job.id)
    job = appliance.jobs.wait(job.id, JOB_TIMEOUT)
    assert job.state == "cancelled", (job.state, job.error)
    assert job.steps[1]["state"] == "undone" and job.steps[2]["state"] == "pending"
    no_trace_of(appliance, job.memo["backup_id"], "cancelme")
    backup_restores_exactly(appliance, "cancelme", tmp_path)


# The appliance process: submits the backup job and runs it; at the copy's first progress report
# (a pause point: the copy is under way and far from done) it says so and waits to be killed.
RUN_ONE_JOB = """
import sys, threading
from appliance.context import Appliance
from appliance.jobs.plan import StepContext
progress = StepContext.progress
def pause_mid_copy(self, fraction, detail=None):
    if 0 < fraction < 1:
        print("copying", fraction, flush=True)
        threading.Event().wait()
    progress(self, fraction, detail)
StepContext.progress = pause_mid_copy
jobs = Appliance.open(sys.argv[1]).jobs
job = jobs.submit("backup", {"vm": sys.argv[2]})
print(job.id, flush=True)
jobs.wait(job.id, 600)
"""


@pytest.mark.slow
def test_appliance_killed_mid_backup_job_is_rolled_back_on_restart(appliance: Appliance, api_client: TestClient,
                                                                    guest_kernel, tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "killed", [512 * MiB])
    first = backup_restores_exactly(appliance, "killed", tmp_path)
    for n in range(6):   # what the next backup must see, though the killed one read part of it
        run(write_pattern(appliance, "killed", "vda", 0x30 + n, (120 + 64 * n) * MiB, 48 * MiB))

    proc = subprocess.Popen([sys.executable, "-c", RUN_ONE_JOB, str(appliance.settings.data_dir), "killed"],
                            stdout=subprocess.PIPE, text=True)
    try:
        job_id = proc.stdout.readline().strip()
        assert proc.stdout.readline().startswith("copying"), "the job never reported its copy"
        assert appliance.jobs.get(job_id).state == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    interrupted = appliance.jobs.get(job_id)
    assert interrupted.state == "running" and interrupted.steps[1]["state"] == "running"
    with api_client:   # the web app's startup takes over what the dead process left
        _until(lambda: api_client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "failed")
    job = appliance.jobs.get(job_id)
    assert "interrupted" in job.error
    assert [s["state"] for s in job.steps] == ["undone", "undone", "pending"]
    # The dead writer's directory (no manifest: no backup, to the store) is the store GC's to sweep.
    gc = appliance.jobs.wait(appliance.jobs.submit("store.gc", {"grace_seconds": 0}).id, JOB_TIMEOUT)
    assert gc.result["abandoned_backups_removed"] == [f"killed/{job.memo['backup_id']}"]
    no_trace_of(appliance, job.memo["backup_id"], "killed")
    assert [m.backup_id for m in appliance.store.list_backups("killed")] == [first["backup_id"]]

    after = backup_restores_exactly(appliance, "killed", tmp_path)
    assert after["kind"] == "incremental", after["notes"]
    assert any("interrupted backup" in n for n in after["notes"]), after["notes"]


def _until(condition, timeout: float = JOB_TIMEOUT, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(interval)
