"""Runs jobs: queues them per resource, runs their steps, undoes them on failure, recovers after a crash.

Every state change is written to the catalog before the work it announces, so a job whose
process died is found on the next start (its runner, pid and start time, is gone: process.py)
and is rolled back or resumed there, as its plan says: never left half-done.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from appliance.access.roles import Role
from appliance.catalog.base import utcnow
from appliance.errors import CairnError, ConflictError, ForbiddenError, NotFoundError
from appliance.process import RELEASED, alive, claim, ours, start_of

from .events import EventLog
from .plan import ACTIVE_STATES, FINISHED_STATES, JobCancelled, JobPlan, PlanFactory, StepContext, Throttle
from .queue import Capacity, ResourceQueues
from .records import JobRecord

log = logging.getLogger("cairn.jobs")
PROGRESS_INTERVAL = 0.5   # seconds between progress writes to the catalog


class JobParamsError(CairnError):
    status = 422


class JobEngine:
    def __init__(self, catalog: sessionmaker[Session], events: EventLog, kinds: Mapping[str, PlanFactory]):
        self.catalog = catalog
        self.events = events
        self.kinds = dict(kinds)
        self.capacity = Capacity()
        self._queues = ResourceQueues(self._run)
        self._cancels: dict[str, threading.Event] = {}
        self._mine: set[str] = set()   # jobs this engine submitted or took over
        self._lock = threading.Lock()

    # -- asking ---------------------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any], policy_id: str | None = None,
               limits: dict[str, int] | None = None, role: Role | None = None) -> JobRecord:
        """Queue a job; its plan is built now, so bad parameters are refused before anything runs.
        `role` is the submitter's (None: the appliance itself, e.g. its scheduler); the plan says
        which role its work needs (JobPlan.needs)."""
        plan = self._plan(kind, params)
        if role is not None and not role.allows(plan.needs):
            raise ForbiddenError(f"a {kind} job with these parameters needs an {plan.needs.value}, not a {role.value}")
        rec = JobRecord(id=uuid.uuid4().hex[:16], kind=kind, resource=plan.resource, state="queued", params=params,
                        limits={**plan.limits, **(limits or {})}, memo={}, policy_id=policy_id,
                        steps=[{"name": s.name, "state": "pending", "error": None} for s in plan.steps],
                        created_at=utcnow(), **claim())
        with self.catalog.begin() as s:
            s.add(rec)
        self._mine.add(rec.id)
        self._queues.submit(rec.resource, rec.id)
        return rec

    def get(self, job_id: str) -> JobRecord:
        with self.catalog() as s:
            rec = s.get(JobRecord, job_id)
            if rec is None:
                raise NotFoundError(f"no job {job_id}")
            return rec

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled at once; a running one stops at its next step or progress report
        and undoes what it did."""
        with self.catalog.begin() as s:
            rec = s.get(JobRecord, job_id)
            if rec is None:
                raise NotFoundError(f"no job {job_id}")
            if rec.state in FINISHED_STATES:
                raise ConflictError(f"job {job_id} has already {rec.state}")
            if rec.state == "undoing":
                raise ConflictError(f"job {job_id} is already undoing its steps")
            rec.cancel_requested = True
        if not self._finish(job_id, "cancelled", error="cancelled before it started", if_state="queued"):
            with self._lock:
                if job_id in self._cancels:
                    self._cancels[job_id].set()
        return self.get(job_id)

    def wait(self, job_id: str, timeout: float) -> JobRecord:
        deadline = time.monotonic() + timeout
        while (rec := self.get(job_id)).state not in FINISHED_STATES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {rec.state} after {timeout:.0f} s")
            time.sleep(0.1)
        return rec

    def active(self) -> list[JobRecord]:
        with self.catalog() as s:
            return list(s.scalars(select(JobRecord).where(JobRecord.state.in_(ACTIVE_STATES))))

    def recover(self) -> list[str]:
        """Take over the jobs whose process died: queued ones run, interrupted ones are rolled back
        or resumed (on their resource's queue, so in order with new work). Returns their ids."""
        orphans = []
        with self.catalog.begin() as s:
            for rec in s.scalars(select(JobRecord).where(JobRecord.state.in_(ACTIVE_STATES))
                                 .order_by(JobRecord.created_at)):
                mine = ours(rec.runner_pid, rec.runner_start)
                # Ours but unknown to this engine: another engine of this process made it (tests).
                if (mine and rec.id in self._mine) or (not mine and alive(rec.runner_pid, rec.runner_start)):
                    continue
                rec.runner_pid, rec.runner_start = os.getpid(), start_of(os.getpid())
                orphans.append((rec.resource, rec.id))
                self._mine.add(rec.id)
        for resource, job_id in orphans:
            self._queues.submit(resource, job_id)
        return [job_id for _, job_id in orphans]

    # -- running --------------------------------------------------------------------------------

    def _plan(self, kind: str, params: dict[str, Any]) -> JobPlan:
        if kind not in self.kinds:
            raise NotFoundError(f"no job kind {kind!r}; known: {', '.join(sorted(self.kinds))}")
        try:
            return self.kinds[kind](params)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'params'}: {x['msg']}" for x in e.errors())
            raise JobParamsError(f"{kind} job: {problems}") from e

    def _run(self, job_id: str) -> None:
        """One job on its resource's worker thread, from wherever it stands."""
        cancel = threading.Event()
        with self._lock:
            self._cancels[job_id] = cancel
        try:
            rec = self.get(job_id)
            if rec.cancel_requested:
                cancel.set()
            if rec.state == "queued":
                self._start(rec, cancel)
            elif rec.state in ("running", "undoing"):
                self._after_interruption(rec, cancel)
        except Exception:
            log.exception("job %s broke its runner", job_id)
            self._finish(job_id, "failed", error="internal error running the job (see the appliance log)")
        finally:
            with self._lock:
                self._cancels.pop(job_id, None)

    def _start(self, rec: JobRecord, cancel: threading.Event) -> None:
        if cancel.is_set():
            self._finish(rec.id, "cancelled", error="cancelled before it started", if_state="queued")
            return
        plan = self._plan(rec.kind, rec.params)
        with self.capacity.hold(rec.limits, cancel) as granted:
            if not granted:
                self._finish(rec.id, "cancelled", error="cancelled while waiting for capacity", if_state="queued")
                return
            if not self._claim(rec.id):
                return   # cancelled meanwhile, by another process
            self.events.emit("job.started", f"{rec.kind} job started on {rec.resource}", resource=rec.resource,
                             job_id=rec.id)
            asyncio.run(_Execution(self, rec, plan, cancel).run())

    def _after_interruption(self, rec: JobRecord, cancel: threading.Event) -> None:
        plan = self._plan(rec.kind, rec.params)
        if plan.after_interruption == "resume" and rec.state == "running" and not rec.cancel_requested:
            self.events.emit("job.resumed", f"{rec.kind} job resumed after the appliance restarted",
                             resource=rec.resource, job_id=rec.id)
            asyncio.run(_Execution(self, rec, plan, cancel).run())
        else:
            reason = "interrupted: the appliance stopped while it ran"
            if rec.state == "undoing":   # it died undoing a failure: that failure is the story
                reason = f"{rec.error}; the appliance stopped while it undid the steps"
            asyncio.run(_Execution(self, rec, plan, cancel).roll_back(reason, "failed"))

    # -- catalog --------------------------------------------------------------------------------

    def _update(self, job_id: str, **values: Any) -> JobRecord:
        with self.catalog.begin() as s:
            rec = s.get(JobRecord, job_id)
            for key, value in values.items():
                setattr(rec, key, value)
            return rec

    def _set_step(self, job_id: str, index: int, state: str, error: str | None = None) -> None:
        with self.catalog.begin() as s:
            rec = s.get(JobRecord, job_id)
            steps = [dict(step) for step in rec.steps]
            steps[index].update(state=state, error=error)
            rec.steps = steps

    def _claim(self, job_id: str) -> bool:
        """queued -> running, unless it is no longer queued (one statement: a cancel cannot slip between)."""
        with self.catalog.begin() as s:
            changed = s.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.state == "queued")
                                .values(state="running", started_at=utcnow(), **claim()))
        return changed.rowcount == 1

    def _finish(self, job_id: str, state: str, result: dict[str, Any] | None = None, error: str | None = None,
                if_state: str | None = None) -> bool:
        """Record the end (only if the job is still in `if_state`, when given) and announce it."""
        values: dict[str, Any] = {"state": state, "result": result, "error": error, "finished_at": utcnow(),
                                  **RELEASED}
        if state == "succeeded":
            values["progress"] = 1.0
        stmt = update(JobRecord).where(JobRecord.id == job_id)
        if if_state is not None:
            stmt = stmt.where(JobRecord.state == if_state)
        with self.catalog.begin() as s:
            if s.execute(stmt.values(**values)).rowcount != 1:
                return False
        rec = self.get(job_id)
        severity = "info" if state == "succeeded" else "warning" if state == "cancelled" else "error"
        message = f"{rec.kind} job {state} on {rec.resource}" + (f": {error}" if error else "")
        self.events.emit(f"job.{state}", message, severity=severity, resource=rec.resource, job_id=job_id,
                         data={"result": result} if result else None)
        return True


class _Execution:
    """One pass over a job's steps (fresh or resumed), with the rollback that follows a failure."""

    def __init__(self, engine: JobEngine, rec: JobRecord, plan: JobPlan, cancel: threading.Event):
        self.engine = engine
        self.rec = rec
        self.plan = plan
        self.cancel = cancel
        self.states = [step["state"] for step in rec.steps]
        self.throttle = Throttle(PROGRESS_INTERVAL)
        self.current = 0
        self.ctx = StepContext(rec.id, rec.params, dict(rec.memo), self._save_memo, self._report, cancel)

    async def run(self) -> None:
        for index, step in enumerate(self.plan.steps):
            if self.states[index] == "done":
                continue
            self.current = index
            if self.engine.get(self.rec.id).cancel_requested:   # asked from another process (the CLI)
                self.cancel.set()
            try:
                self.ctx.check_cancelled()
                self._step_state(index, "running")
                await step.run(self.ctx)
            except BaseException as e:
                cancelled = isinstance(e, JobCancelled)
                self._step_state(index, "cancelled" if cancelled else "failed", _describe(e))
                await self.roll_back(_describe(e), "cancelled" if cancelled else "failed")
                return
            self._step_state(index, "done")
            self._report(1.0)
        self.engine._finish(self.rec.id, "succeeded", result=self.ctx.result or None)

    async def roll_back(self, reason: str, final_state: str) -> None:
        """Undo, newest first, every step that started (an interrupted one may be half-done)."""
        self.engine._update(self.rec.id, state="undoing", error=reason)
        problems = []
        for index in reversed(range(len(self.plan.steps))):
            step = self.plan.steps[index]
            if self.states[index] in ("pending", "undone"):
                continue
            if step.undo is None:
                continue
            try:
                await step.undo(self.ctx)
            except Exception as e:
                log.exception("undo of step %s of job %s failed", step.name, self.rec.id)
                problems.append(f"undo of {step.name} failed: {_describe(e)}")
                self._step_state(index, "undo_failed", _describe(e))
                continue
            self._step_state(index, "undone")
        error = reason + ("; " + "; ".join(problems) if problems else "; undone")
        self.engine._finish(self.rec.id, final_state, error=error)

    def _step_state(self, index: int, state: str, error: str | None = None) -> None:
        self.states[index] = state
        self.engine._set_step(self.rec.id, index, state, error)
        self.engine.events.publish({"kind": "job.step", "job_id": self.rec.id, "resource": self.rec.resource,
                                    "data": {"step": self.plan.steps[index].name, "state": state}})

    def _save_memo(self, memo: dict[str, Any]) -> None:
        self.engine._update(self.rec.id, memo=memo)

    def _report(self, fraction: float) -> None:
        """Overall progress from the steps' weights; written now and then, published each time."""
        weights = [s.weight for s in self.plan.steps]
        done = sum(w for w, state in zip(weights, self.states, strict=True) if state == "done")
        overall = (done + weights[self.current] * fraction * (self.states[self.current] != "done")) / sum(weights)
        if fraction >= 1.0 or self.throttle():
            rec = self.engine._update(self.rec.id, progress=overall)
            if rec.cancel_requested:
                self.cancel.set()
        self.engine.events.publish({"kind": "job.progress", "job_id": self.rec.id, "resource": self.rec.resource,
                                    "data": {"progress": overall, "step": self.plan.steps[self.current].name}})


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__
