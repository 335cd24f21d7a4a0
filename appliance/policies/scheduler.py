"""The scheduler: turns due policies into jobs, inside `cairn serve`.

Each policy carries a mark, `scheduled_until`: runs due up to it are dealt with. A tick
looks at the runs due between the mark and now: however many there are (the appliance was
down, or the clock jumped), they become one run, or none if the policy says not to run
missed schedules. The clock is injected, so tests drive a week of schedules in seconds.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from appliance.catalog.base import utcnow
from appliance.deletion.deletables import deletion_service
from appliance.deletion.protection import DeletionService
from appliance.jobs.engine import JobEngine
from appliance.jobs.params import BackupParams, GcParams, SnapshotParams, SyncParams, VerifyParams
from appliance.jobs.records import JobRecord
from appliance.jobs.resources import HOST, store_resource

from .records import PolicyRecord
from .service import (
    BackupPolicy,
    Clock,
    PolicyService,
    SnapshotPolicy,
    StorePolicy,
    SyncPolicy,
    VerifyPolicy,
    latest_due,
    policy_of,
)

if TYPE_CHECKING:
    from appliance.context import Appliance

log = logging.getLogger("cairn.scheduler")
TICK_SECONDS = 20.0
# A run this late counts as missed (the appliance was down), not as a tick that came a little late.
LATE = timedelta(seconds=3 * TICK_SECONDS)


@dataclass
class Scheduler:
    policies: PolicyService
    jobs: JobEngine
    store_key: str
    deletions: DeletionService
    clock: Clock = utcnow
    interval: float = TICK_SECONDS
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def for_appliance(cls, app: Appliance, clock: Clock = utcnow) -> Scheduler:
        return cls(PolicyService(app.catalog, clock), app.jobs, store_resource(app), deletion_service(app, clock), clock)

    def tick(self) -> list[JobRecord]:
        """Submit the jobs of every policy due now (returns them); purge the recycle bin's expired entries."""
        now = self.clock()
        self._purge_expired()
        submitted = []
        for rec in self.policies.enabled():
            try:
                submitted += self._run_policy(rec, now)
            except Exception:  # one broken policy must not stop the others; the event says which
                log.exception("policy %s could not run", rec.name)
                self.jobs.events.emit("policy.failed", f"policy {rec.name} could not run (see the appliance log)",
                                      severity="error", resource=f"policy:{rec.name}")
        return submitted

    def _purge_expired(self) -> None:
        try:
            for gone in self.deletions.purge_expired():
                self.jobs.events.emit("recycle.purged", f"{gone.kind} {gone.name} left the recycle bin for good",
                                      resource=f"{gone.kind}:{gone.name}")
        except Exception:  # the bin is tried again next tick; policies still run
            log.exception("purging the recycle bin failed")
            self.jobs.events.emit("recycle.failed", "purging the recycle bin failed (see the appliance log)",
                                  severity="error")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cairn-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)

    def _run_policy(self, rec: PolicyRecord, now: datetime) -> list[JobRecord]:
        policy = policy_of(rec)
        due, count = latest_due(policy.schedule, rec.scheduled_until or rec.created_at, now)
        if due is None:
            return []
        self.policies.mark_scheduled(rec.id, now)
        missed = now - due > LATE
        if missed and not policy.run_missed:
            self.jobs.events.emit("policy.skipped", f"policy {rec.name}: skipped the run due {due:%Y-%m-%d %H:%M} "
                                  "UTC (missed, and run_missed is off)", resource=f"policy:{rec.name}")
            return []
        active = [job for job in self.jobs.active() if job.policy_id == rec.id]
        busy = {job.params.get("vm") for job in active}
        vms = [vm for vm in self.policies.selected_vms(policy) if vm not in busy]
        if isinstance(policy, StorePolicy):   # the store's upkeep: one job a run, none while the last one runs
            jobs = [] if active else [self._submit_upkeep(rec.id, policy)]
        elif isinstance(policy, SyncPolicy):   # one job copies every selected VM's backups, one run at a time
            jobs = [] if active or not vms else [self._submit_sync(rec.id, policy, vms)]
        else:
            jobs = [self._submit(rec.id, policy, vm) for vm in vms]
        note = f" (catching up {count} missed run(s))" if missed else ""
        self.jobs.events.emit("policy.run", f"policy {rec.name} due {due:%Y-%m-%d %H:%M} UTC: "
                              f"{len(jobs)} job(s){note}", resource=f"policy:{rec.name}",
                              data={"due": due.isoformat(), "vms": vms, "skipped_busy": sorted(busy - {None}),
                                    "missed_runs": count if missed else 0})
        return jobs

    def _submit(self, policy_id: str, policy: BackupPolicy | SnapshotPolicy, vm: str) -> JobRecord:
        if isinstance(policy, SnapshotPolicy):
            return self.jobs.submit("snapshot", SnapshotParams(vm=vm, prefix=policy.name, keep=policy.keep),
                                    policy_id=policy_id)
        limits = {key: limit for key, limit in ((HOST, policy.max_per_host), (self.store_key, policy.max_per_store))
                  if limit is not None}
        params = BackupParams(vm=vm, full_every=policy.full_every, retention=policy.retention,
                              include=policy.include, exclude=policy.exclude)
        return self.jobs.submit("backup", params, policy_id=policy_id, limits=limits)

    def _submit_upkeep(self, policy_id: str, policy: StorePolicy) -> JobRecord:
        if isinstance(policy, VerifyPolicy):
            return self.jobs.submit("store.verify", VerifyParams(sample_percent=policy.sample_percent),
                                    policy_id=policy_id)
        return self.jobs.submit("store.gc", GcParams(), policy_id=policy_id)

    def _submit_sync(self, policy_id: str, policy: SyncPolicy, vms: list[str]) -> JobRecord:
        params = SyncParams(target=policy.target, source=policy.source, backups_of=vms, bandwidth=policy.bandwidth)
        return self.jobs.submit("store.sync", params, policy_id=policy_id)
