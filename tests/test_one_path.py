"""One path per operation, end to end against a real `cairn serve`:

- a snapshot delete started by `cairn snapshot delete` and a backup started through the server's
  API, on one VM, run one after the other, whichever is asked for first, on SQLite and PostgreSQL:
  both claim the VM in the catalog;
- a backup started from the CLI, the API, the console and a policy leaves the same records and
  events, and one that fails half-way (the disk's backing file is gone: the copy cannot read it)
  is undone the same way: no backup row, nothing in the store, the same steps undone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from backup_helpers import MiB, run
from catalog_backends import catalog_url  # noqa: F401  (fixture)
from sqlalchemy import select
from web_helpers import add_user, api_client_of, button, chromium, console_server, element, sign_in

from appliance.access.roles import Role
from appliance.backups.records import BackupRecord
from appliance.context import Appliance
from appliance.jobs.records import EventRecord, JobRecord
from appliance.policies.scheduler import Scheduler
from appliance.policies.service import BackupPolicy
from dedup import Store

CAIRN = str(Path(sys.executable).with_name("cairn"))
JOB_TIMEOUT = 300


def qemu_io(image: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, image], check=True, capture_output=True)


def cli_env(data_dir: Path, catalog: str | None) -> dict[str, str]:
    env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir)}
    return {**env, "CAIRN_CATALOG_URL": catalog} if catalog else env


def until(condition: Any, what: str, timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)
    return found


def newest_job(appliance: Appliance, kind: str, resource: str) -> JobRecord | None:
    with appliance.catalog() as s:
        return s.scalars(select(JobRecord).where(JobRecord.kind == kind, JobRecord.resource == resource)
                         .order_by(JobRecord.created_at.desc())).first()


@pytest.mark.slow
@pytest.mark.parametrize("delete_from", ["cli", "server"])
def test_a_snapshot_delete_and_a_backup_of_one_vm_from_two_processes_run_one_after_the_other(
        appliance_data_dir: Path, catalog_url: str | None, delete_from: str):  # noqa: F811
    """The delete comes first (held to 8 MiB/s, it takes seconds), from the CLI or through the
    server; the backup is asked for through the other while it runs, and waits for it."""
    Store.init(appliance_data_dir / "store")
    appliance = Appliance.open(str(appliance_data_dir), catalog_url)
    appliance.vms.create("web", [256 * MiB])
    qemu_io(appliance.vms.spec("web").disks[0].path, f"write -P 0x11 0 {64 * MiB}")
    run(appliance.snapshots.create("web", "s1"))
    qemu_io(appliance.vms.spec("web").disks[0].path, f"write -P 0x22 {32 * MiB} {64 * MiB}")
    add_user(appliance_data_dir, "ops", Role.ADMIN, catalog_url=catalog_url)
    env = cli_env(appliance_data_dir, catalog_url)

    with console_server(appliance_data_dir, catalog_url) as base, api_client_of(base, appliance_data_dir, "ops") as api:
        if delete_from == "cli":
            cli = subprocess.Popen([CAIRN, "snapshot", "delete", "web", "s1", "--via", "commit", "--rate", "8M"],
                                   env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            answer = api.request("DELETE", "/api/v1/vms/web/snapshots/s1", json={"via": "commit", "rate_limit": 8 * MiB})
            assert answer.status_code == 202, answer.text
        deleting = until(lambda: (job := newest_job(appliance, "snapshot.delete", "vm:web")) and
                         job.state == "running" and job, "the snapshot delete to run")
        if delete_from == "cli":
            answer = api.post("/api/v1/vms/web/backups", json={"full": True})
            assert answer.status_code == 202, answer.text
            backing_up = answer.json()["id"]
        else:
            cli = subprocess.Popen([CAIRN, "backup", "create", "web", "--full"], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            backing_up = until(lambda: (job := newest_job(appliance, "backup", "vm:web")) and job.id,
                               "the CLI's backup to be asked for")
        _, complaints = cli.communicate(timeout=JOB_TIMEOUT)
        assert cli.returncode == 0, complaints
        deleted = appliance.jobs.wait(deleting.id, JOB_TIMEOUT)
        backup = appliance.jobs.wait(backing_up, JOB_TIMEOUT)

    assert deleted.state == backup.state == "succeeded", (deleted.error, backup.error)
    assert backup.created_at < deleted.finished_at, "the backup was asked for while the delete ran"
    assert deleted.finished_at <= backup.started_at, "and it started only once the delete had ended"
    if delete_from == "server":
        assert "waits for vm:web" in complaints, complaints
    assert appliance.backups.get(backup.result["backup_id"]).status == "ok"
    assert appliance.snapshots.tree("web").snapshots == {}


# -- four ways to ask for a backup -------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def next_job(appliance: Appliance, resource: str, before: JobRecord | None) -> JobRecord:
    """The backup job submitted on the resource after `before`, once there is one."""
    def submitted() -> JobRecord | None:
        job = newest_job(appliance, "backup", resource)
        return job if job is not None and (before is None or job.id != before.id) else None
    return until(submitted, f"a backup job on {resource}")


def outcome(appliance: Appliance, job: JobRecord) -> dict[str, Any]:
    """What a backup job left: the job as stored, its events, and its backup in the catalog and the
    store; without what differs by nature (ids, times, who submitted it)."""
    with appliance.catalog() as s:
        events = list(s.scalars(select(EventRecord).where(EventRecord.job_id == job.id).order_by(EventRecord.id)))
        backups = list(s.scalars(select(BackupRecord).where(BackupRecord.vm_name == job.resource[3:])))
    backup_id = job.memo.get("backup_id")
    record = next((b for b in backups if b.id == backup_id), None)
    in_store = {m.backup_id for m in appliance.store.list_backups(job.resource[3:])}
    return {"kind": job.kind, "resource": job.resource, "state": job.state, "progress": job.progress,
            "steps": [(step["name"], step["state"]) for step in job.steps],
            "result": sorted((job.result or {}).keys()),
            "error": job.error and ("names the gone backing file" if "gone.qcow2" in job.error else job.error),
            "events": [(e.kind, e.severity, e.resource, sorted(e.data)) for e in events],
            "backup": record and (record.status, record.kind, record.vm_name, record.error),
            "in_store": backup_id in in_store,
            "failed_rows": [b.id for b in backups if b.status != "ok"]}


@pytest.mark.slow
def test_a_backup_from_the_cli_the_api_the_console_and_a_policy_leaves_the_same_records(
        appliance_data_dir: Path, tmp_path: Path):
    Store.init(appliance_data_dir / "store")
    appliance = Appliance.open(str(appliance_data_dir))
    appliance.vms.create("web", [32 * MiB])
    qemu_io(appliance.vms.spec("web").disks[0].path, f"write -P 0x5a 0 {4 * MiB}")
    # A VM whose disk reads from a backing file that is gone: the backup claims its id, then the
    # copy cannot open the disk and fails; what the claim made must be undone.
    broken = appliance.vms.create("broken", [32 * MiB]).disks[0].path
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "gone.qcow2"), "32M"], check=True)
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(tmp_path / "gone.qcow2"), broken], check=True)
    (tmp_path / "gone.qcow2").unlink()
    add_user(appliance_data_dir, "ops", Role.ADMIN)
    clock = Clock()
    scheduler = Scheduler.for_appliance(appliance, clock)

    with console_server(appliance_data_dir) as base, api_client_of(base, appliance_data_dir, "ops") as api, \
            chromium() as browser:
        sign_in(browser, base, "ops")

        def from_cli(vm: str) -> None:
            subprocess.run([CAIRN, "backup", "create", vm, "--full"], env=cli_env(appliance_data_dir, None),
                           check=False, capture_output=True, timeout=JOB_TIMEOUT)

        def from_api(vm: str) -> None:
            assert api.post(f"/api/v1/vms/{vm}/backups", json={"full": True}).status_code == 202

        def from_console(vm: str) -> None:
            browser.get(f"{base}/ui/#/vm/{vm}")
            element(browser, "main form.inline input[name=full]").click()
            button(browser, "main", "Back up now").click()

        def from_policy(vm: str) -> None:
            clock.now = clock.now.replace(day=clock.now.day + 1, hour=0)
            policy = scheduler.policies.create(BackupPolicy(name=f"nightly-{vm}", schedule="0 2 * * *", vms=[vm],
                                                            full_every=0))
            clock.now = clock.now.replace(hour=2, minute=0, second=30)
            (job,) = scheduler.tick()
            appliance.jobs.wait(job.id, JOB_TIMEOUT)
            scheduler.policies.delete(policy.id)

        outcomes: dict[tuple[str, str], dict[str, Any]] = {}
        for vm in ("web", "broken"):
            for way, ask in (("cli", from_cli), ("api", from_api), ("console", from_console), ("policy", from_policy)):
                before = newest_job(appliance, "backup", f"vm:{vm}")
                ask(vm)
                job = appliance.jobs.wait(next_job(appliance, f"vm:{vm}", before).id, JOB_TIMEOUT)
                if way == "console":   # the page follows the job to its end
                    element(browser, f'main [data-job="{job.id}"] .state-{job.state}', timeout=JOB_TIMEOUT)
                outcomes[way, vm] = outcome(appliance, job)

    ok = outcomes["cli", "web"]
    assert ok["state"] == "succeeded" and ok["steps"] == [("claim", "done"), ("copy", "done"), ("announce", "done")]
    assert ok["backup"] == ("ok", "full", "web", None) and ok["in_store"]
    assert [e[0] for e in ok["events"]] == ["job.started", "backup.done", "job.succeeded"]
    failed = outcomes["cli", "broken"]
    assert failed["state"] == "failed" and failed["error"] == "names the gone backing file"
    assert failed["steps"] == [("claim", "undone"), ("copy", "undone"), ("announce", "pending")]
    assert failed["backup"] is None and not failed["in_store"] and failed["failed_rows"] == []
    assert [e[0] for e in failed["events"]] == ["job.started", "job.failed"]
    for way in ("api", "console", "policy"):
        assert outcomes[way, "web"] == ok, way
        assert outcomes[way, "broken"] == failed, way
    assert len(Store.open(appliance_data_dir / "store").list_backups("web")) == 4
