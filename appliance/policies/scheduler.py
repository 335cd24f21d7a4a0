"""The scheduler: turns due policies into jobs, inside the `cairn serve` that leads.

Each policy carries a mark, `scheduled_until`: runs due up to it are dealt with. A tick
looks at the runs due between the mark and now: however many there are (the appliance was
down, or the clock jumped), they become one run, or none if the policy says not to run
missed schedules. The clock is injected, so tests drive a week of schedules in seconds.

A run happens once, whichever node leads and whenever one dies: the policy's new mark, the
run's jobs and its event are written in one transaction, which moves the mark only from where
this tick read it and only while the scheduler's leader term is the lease's (jobs/nodes.py).
A leader that dies before that commit leaves the run to the next leader, whose tick finds it
due; one that dies after leaves queued jobs of a dead runner, which the next leader recovers
and runs. Between ticks the scheduler sleeps until the next run is due (at most `interval`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from appliance.catalog.base import utcnow
from appliance.deletion.deletables import deletion_service
from appliance.deletion.protection import DeletionService
from appliance.jobs.claims import exclusive
from appliance.jobs.engine import JobEngine
from appliance.jobs.nodes import NotLeaderError, Term
from appliance.jobs.params import BackupParams, GcParams, SnapshotParams, SyncParams, VerifyParams
from appliance.jobs.records import ACTIVE_STATES, JobRecord
from appliance.jobs.resources import HOST, store_resource

from .records import PolicyRecord
from .service import (
    AnyPolicy,
    BackupPolicy,
    Clock,
    PolicyService,
    SnapshotPolicy,
    StorePolicy,
    SyncPolicy,
    VerifyPolicy,
    latest_due,
    next_runs,
    policy_of,
)

if TYPE_CHECKING:
    from appliance.context import Appliance

log = logging.getLogger("cairn.scheduler")
TICK_SECONDS = 20.0
# A run this late counts as missed (the appliance was down), not as a tick that came a little late.
LATE = timedelta(seconds=3 * TICK_SECONDS)
SOON = 0.05          # seconds after a run is due that the scheduler wakes for it
OUTAGE_RETRY = 1.0   # seconds between ticks while the catalog does not answer


@dataclass
class Scheduler:
    policies: PolicyService
    jobs: JobEngine
    store_key: str
    deletions: DeletionService
    clock: Clock = utcnow
    interval: float = TICK_SECONDS
    # The leader term it runs in (the server's); None: no other scheduler can run (a test, a tool).
    term: Term | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def for_appliance(cls, app: Appliance, clock: Clock = utcnow, term: Term | None = None) -> Scheduler:
        return cls(PolicyService(app.catalog, clock), app.jobs, store_resource(app), deletion_service(app, clock), clock,
                   term=term)

    def tick(self) -> list[JobRecord]:
        """Submit the jobs of every policy due now (returns them); purge the recycle bin's expired entries."""
        now = self.clock()
        self._purge_expired()
        submitted = []
        for rec in self.policies.enabled():
            try:
                submitted += self._run_policy(rec, now)
            except NotLeaderError as e:   # another node leads now: its scheduler runs what is due
                log.warning("the scheduler stops: %s", e)
                break
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
            try:
                self.tick()
                pause = self._until_next()
            except SQLAlchemyError as e:   # the catalog is away (restarting): what is due is run once it is back
                log.warning("the scheduler could not reach the catalog: %s", e)
                pause = min(self.interval, OUTAGE_RETRY)
            self._stop.wait(pause)

    def _until_next(self) -> float:
        """Seconds to sleep: until the next run of an enabled policy is due, at most `interval`."""
        now = self.clock()
        dues = [next_runs(policy_of(rec).schedule, now, 1)[0] for rec in self.policies.enabled()]
        return min([self.interval, *((due - now).total_seconds() + SOON for due in dues)])

    def _run_policy(self, rec: PolicyRecord, now: datetime) -> list[JobRecord]:
        """The run of `rec` due by `now`, if any, in one transaction (see the module)."""
        policy = policy_of(rec)
        due, count = latest_due(policy.schedule, rec.scheduled_until or rec.created_at, now)
        if due is None:
            return []
        vms = self.policies.selected_vms(policy)
        missed = now - due > LATE
        with exclusive(self.jobs.catalog) as s:
            if self.term is not None:
                self.term.confirm(s)
            mark = s.get(PolicyRecord, rec.id, with_for_update=True, populate_existing=True)
            if mark is None or mark.scheduled_until != rec.scheduled_until:
                return []   # deleted, or run meanwhile by another scheduler (a leader before this one)
            mark.scheduled_until = now
            jobs: list[JobRecord] = []
            if missed and not policy.run_missed:
                event = self.jobs.events.record(
                    s, "policy.skipped", f"policy {rec.name}: skipped the run due {due:%Y-%m-%d %H:%M} UTC "
                    "(missed, and run_missed is off)", resource=f"policy:{rec.name}")
            else:
                jobs, event = self._submit_run(s, rec, policy, vms, due, count if missed else 0)
        for job in jobs:
            self.jobs.queue(job)
        self.jobs.events.deliver(event)
        return jobs

    def _submit_run(self, s: Session, rec: PolicyRecord, policy: AnyPolicy, vms: list[str],
                    due: datetime, missed_runs: int) -> tuple[list[JobRecord], dict[str, Any]]:
        """The run's jobs, one per VM the policy selects and is not still working on (a sync: one job for
        them all; the store's upkeep: one job; each one run at a time), and its event."""
        active = list(s.scalars(select(JobRecord.params).where(
            JobRecord.policy_id == rec.id, JobRecord.state.in_(ACTIVE_STATES))))
        busy_vms = {params.get("vm") for params in active}
        run_vms = [vm for vm in vms if vm not in busy_vms]
        if isinstance(policy, StorePolicy):   # the store's upkeep: one job a run, none while the last one runs
            jobs = [] if active else [self._submit_upkeep(s, rec.id, policy)]
        elif isinstance(policy, SyncPolicy):
            jobs = [] if active or not run_vms else [self._submit_sync(s, rec.id, policy, run_vms)]
        else:
            jobs = [self._submit_in(s, rec.id, policy, vm) for vm in run_vms]
        note = f" (catching up {missed_runs} missed run(s))" if missed_runs else ""
        event = self.jobs.events.record(s, "policy.run", f"policy {rec.name} due {due:%Y-%m-%d %H:%M} UTC: "
                                        f"{len(jobs)} job(s){note}", resource=f"policy:{rec.name}",
                                        data={"due": due.isoformat(), "vms": run_vms,
                                              "skipped_busy": sorted(busy_vms - {None}), "missed_runs": missed_runs})
        return jobs, event

    def _submit_in(self, s: Session, policy_id: str, policy: BackupPolicy | SnapshotPolicy, vm: str) -> JobRecord:
        if isinstance(policy, SnapshotPolicy):
            return self.jobs.submit_in(s, "snapshot", SnapshotParams(vm=vm, prefix=policy.name, keep=policy.keep),
                                       policy_id=policy_id)
        limits = {key: limit for key, limit in ((HOST, policy.max_per_host), (self.store_key, policy.max_per_store))
                  if limit is not None}
        params = BackupParams(vm=vm, full_every=policy.full_every, retention=policy.retention,
                              include=policy.include, exclude=policy.exclude)
        return self.jobs.submit_in(s, "backup", params, policy_id=policy_id, limits=limits)

    def _submit_upkeep(self, s: Session, policy_id: str, policy: StorePolicy) -> JobRecord:
        if isinstance(policy, VerifyPolicy):
            return self.jobs.submit_in(s, "store.verify", VerifyParams(sample_percent=policy.sample_percent),
                                       policy_id=policy_id)
        return self.jobs.submit_in(s, "store.gc", GcParams(), policy_id=policy_id)

    def _submit_sync(self, s: Session, policy_id: str, policy: SyncPolicy, vms: list[str]) -> JobRecord:
        params = SyncParams(target=policy.target, source=policy.source, backups_of=vms, bandwidth=policy.bandwidth)
        return self.jobs.submit_in(s, "store.sync", params, policy_id=policy_id)
