"""The scheduler driven by a controllable clock, running real backups and snapshots.

Stopped VMs are backed up through qemu-nbd (cheap); one test backs up a running guest and
proves the bytes."""
from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from itertools import pairwise
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
from sqlalchemy import select

from appliance.backups.retention import RetentionRules
from appliance.context import Appliance
from appliance.jobs.records import EventRecord, JobRecord
from appliance.policies.scheduler import Scheduler
from appliance.policies.service import BackupPolicy, GcPolicy, PolicyService, SnapshotPolicy, VerifyPolicy
from restore import restore_disk

JOB_TIMEOUT = 240


class FakeClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 23, 0, 30, tzinfo=UTC))   # a Monday


def scheduler(appliance: Appliance, clock: FakeClock) -> tuple[Scheduler, PolicyService]:
    sched = Scheduler.for_appliance(appliance, clock)
    return sched, sched.policies


def tick_and_wait(appliance: Appliance, sched: Scheduler) -> list[JobRecord]:
    jobs = [appliance.jobs.wait(j.id, JOB_TIMEOUT) for j in sched.tick()]
    assert all(j.state == "succeeded" for j in jobs), [(j.state, j.error) for j in jobs]
    return jobs


def write_offline(appliance: Appliance, vm: str, pattern: int, offset: int) -> None:
    disk = appliance.vms.spec(vm).disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} 256k", disk], check=True,
                   capture_output=True)


def test_a_week_of_nightly_backups_fulls_incrementals_and_retention(appliance: Appliance, clock: FakeClock):
    appliance.vms.create("night", [16 * MiB])
    sched, policies = scheduler(appliance, clock)
    policies.create(BackupPolicy(name="nightly", schedule="0 2 * * *", vms=["night"], full_every=3,
                                 retention=RetentionRules(keep_last=4)))
    kinds = []
    for day in range(8):
        clock.now = datetime(2026, 11, 23, 1, 0, tzinfo=UTC) + timedelta(days=day)
        assert sched.tick() == [], "nothing is due before 02:00"
        write_offline(appliance, "night", 0x10 + day, day * MiB)
        clock.now += timedelta(hours=1)
        (job,) = tick_and_wait(appliance, sched)
        kinds.append(job.result["kind"])
        assert job.policy_id is not None and job.params["full_every"] == 3
    assert kinds == ["full", "incremental", "incremental", "incremental"] * 2, "a full re-read after 3 incrementals"
    kept = appliance.store.list_backups("night")
    assert len(kept) == 4
    statuses = [b.status for b in appliance.backups.list("night")]
    assert statuses.count("ok") == 4 and statuses.count("pruned") == 4
    ref, out = appliance.settings.scratch_dir / "ref.raw", appliance.settings.scratch_dir / "out.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", appliance.vms.spec("night").disks[0].path, str(ref)],
                   check=True)
    restore_disk(appliance.store, kept[-1].backup_id, "vda", out)
    assert same_content(ref, out)


def test_missed_runs_after_downtime_run_once_or_are_skipped(appliance: Appliance, clock: FakeClock):
    for name in ("m1", "m2"):
        appliance.vms.create(name, [8 * MiB])
    sched, policies = scheduler(appliance, clock)
    policies.create(BackupPolicy(name="hourly", schedule="0 * * * *", vms=["m*"]))
    strict = policies.create(BackupPolicy(name="strict", schedule="30 * * * *", vms=["m1"], run_missed=False))
    clock.now += timedelta(hours=5, minutes=10)   # the appliance was down: 5 hourly runs and 5 half-past runs missed
    jobs = tick_and_wait(appliance, sched)
    assert sorted(j.params["vm"] for j in jobs) == ["m1", "m2"], "hourly ran once per VM; strict skipped"
    assert sched.tick() == [], "caught up: nothing more is due"
    with appliance.catalog() as s:
        events = {e.kind: e for e in s.scalars(select(EventRecord).where(EventRecord.kind.like("policy.%")))}
    assert events["policy.run"].data["missed_runs"] == 5
    assert "run_missed is off" in events["policy.skipped"].message
    clock.now = clock.now.replace(minute=30) + timedelta(hours=1)   # on time again: strict runs
    assert [j.params["vm"] for j in tick_and_wait(appliance, sched) if j.policy_id == strict.id] == ["m1"]


def test_concurrency_limit_per_host_is_respected(appliance: Appliance, clock: FakeClock):
    names = [f"c{i}" for i in range(3)]
    for name in names:
        appliance.vms.create(name, [24 * MiB])
        write_offline(appliance, name, 0x33, 0)
    sched, policies = scheduler(appliance, clock)
    policies.create(BackupPolicy(name="one-at-a-time", schedule="*/15 * * * *", vms=["c*"], max_per_host=1))
    clock.now += timedelta(minutes=15)
    jobs = sorted(tick_and_wait(appliance, sched), key=lambda j: j.started_at)
    assert len(jobs) == 3 and all(j.limits == {"host:local": 1} for j in jobs)
    assert all(a.finished_at <= b.started_at for a, b in pairwise(jobs)), "never two backups at once"


def test_snapshot_policy_takes_and_rotates_automatic_snapshots(appliance: Appliance, clock: FakeClock):
    appliance.vms.create("snappy", [16 * MiB])
    sched, policies = scheduler(appliance, clock)
    policies.create(SnapshotPolicy(name="quarter", schedule="*/15 * * * *", vms=["snappy"], keep=2))
    taken = []
    for _ in range(3):
        clock.now += timedelta(minutes=15)
        write_offline(appliance, "snappy", 0x44, 0)
        (job,) = tick_and_wait(appliance, sched)
        taken.append(job.result["snapshot_name"])
    names = sorted(s.name for s in appliance.snapshots.tree("snappy").snapshots.values())
    assert names == sorted(taken[1:]), "the oldest automatic snapshot was merged away"
    assert job.result["rotated"] == [taken[0]]


@pytest.mark.slow
def test_a_policy_due_now_backs_up_a_running_guest_byte_exact(appliance: Appliance, guest_kernel, tmp_path: Path,
                                                               clock: FakeClock):
    boot_guest_vm(appliance, guest_kernel, "live", [128 * MiB])
    sched, policies = scheduler(appliance, clock)
    policies.set_tags("live", ["prod"])
    policies.create(BackupPolicy(name="prod", schedule="0 3 * * *", tags=["prod"], full_every=2))
    for day, pattern in enumerate((0x71, 0x72)):
        run(write_pattern(appliance, "live", "vda", pattern, (10 + day) * MiB, MiB))
        clock.now = datetime(2026, 11, 23 + day, 3, 0, tzinfo=UTC)
        run(appliance.driver.pause("live"))
        try:
            (job,) = tick_and_wait(appliance, sched)

            async def copy() -> None:
                async with appliance.driver.session("live") as s:
                    await reference_copy(s, "vda", tmp_path / "ref.raw", tmp_path / "ref.sock")
            run(copy())
        finally:
            run(appliance.driver.resume("live"))
        assert job.result["kind"] == ("full", "incremental")[day]
        restore_disk(appliance.store, job.result["backup_id"], "vda", tmp_path / f"out{day}.raw")
        assert same_content(tmp_path / "ref.raw", tmp_path / f"out{day}.raw")


def test_verify_and_gc_run_on_their_schedules_as_store_jobs(appliance: Appliance, clock: FakeClock):
    """Store upkeep as policies: no VM selection, one job a run on the store, with the policy's sample."""
    appliance.vms.create("kept", [8 * MiB])
    sched, policies = scheduler(appliance, clock)
    policies.create(BackupPolicy(name="nightly", schedule="0 1 * * *", vms=["kept"]))
    policies.create(VerifyPolicy(name="check", schedule="0 3 * * 0", sample_percent=25))
    policies.create(GcPolicy(name="collect", schedule="0 4 * * *"))
    clock.now = datetime(2026, 11, 23, 1, 30, tzinfo=UTC)
    tick_and_wait(appliance, sched)                                # the backup the upkeep then looks at
    clock.now = datetime(2026, 11, 23, 4, 30, tzinfo=UTC)        # a Monday: GC, not the Sunday verify
    (gc,) = tick_and_wait(appliance, sched)
    assert gc.kind == "store.gc" and gc.policy_id is not None and gc.result["chunks_removed"] == 0
    clock.now = datetime(2026, 11, 29, 3, 30, tzinfo=UTC)        # Sunday
    jobs = {j.kind: j for j in tick_and_wait(appliance, sched)}
    assert set(jobs) == {"store.verify", "store.gc", "backup"}, "GC and the backup caught up once, verify ran"
    assert jobs["store.verify"].params["sample_percent"] == 25 and jobs["store.verify"].result["ok"] is True
    assert policies.preview("check", 1)["vms"] == {}, "an upkeep policy selects no VM"
    with pytest.raises(ValueError, match="less than or equal to 100"):
        VerifyPolicy(name="bad", schedule="0 3 * * *", sample_percent=120)
