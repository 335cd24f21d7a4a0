"""Runs jobs: queues them per resource, runs their steps, undoes them on failure, recovers after a crash.

Whoever submits a job (the API in `cairn serve`, a CLI command, the scheduler) runs it, in its
own process, on a worker thread of the job's resource. Before it starts it claims the resource
in the catalog (claims.py), so jobs on one resource run one at a time and in submission order
across processes and nodes; a waiting worker asks again every POLL_INTERVAL seconds, or at once
when a job of this process ends.

Every state change is written to the catalog before the work it announces, so a job whose
runner died (its process, or its whole node: nodes.py) is found by the next process that needs
its resource, by its node's `cairn serve` or by the leader (recover()), and is rolled back or
resumed there, as its plan says: never left half-done. A catalog that stops answering (a
restart of PostgreSQL) is waited for, up to CATALOG_OUTAGE seconds, by every write a runner
makes; past that the job is left as it stands, to its node's next recovery.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from appliance.access.roles import Role
from appliance.catalog.base import rows_changed, utcnow
from appliance.errors import CairnError, ConflictError, ForbiddenError, NotFoundError
from appliance.process import alive, ours

from . import claims
from .catalog import JobCatalog
from .events import EventLog
from .nodes import Nodes
from .plan import JobCancelled, JobKind, JobPlan, StepContext, Throttle
from .queue import Capacity, ResourceQueues
from .records import (
    ACTIVE_STATES,
    FINISHED_STATES,
    HOLDING_STATES,
    JobRecord,
    JobState,
    Severity,
    StepState,
)

log = logging.getLogger("cairn.jobs")
T = TypeVar("T")
PROGRESS_INTERVAL = 0.5   # seconds between progress writes to the catalog
SETTLE_TIMEOUT = 30.0     # seconds a finished job's worker may take to close its event loop
POLL_INTERVAL = 0.5       # seconds between asks for a resource another process holds
AWAIT_INTERVAL = 0.2      # seconds between looks at an awaited job's state (outcome())
CATALOG_OUTAGE = 30.0     # seconds a runner waits for a catalog that stopped answering
OUTAGE_RETRY = 1.0        # seconds between its tries meanwhile
RELEASED: dict[str, Any] = {"runner_node": None, "runner_pid": None, "runner_start": None}

# The jobs this process runs or will run (by every engine in it): a job with this process's pid
# that is not here belongs to an earlier process that had the same pid, or was given up by a
# runner that lost the catalog. A job is added before the transaction that records it or takes
# it over commits, so a recovery in another thread never sees it as nobody's.
_RUN_HERE: set[str] = set()
# Taking over a job is checked and done by one thread of this process at a time.
_ADOPTING = threading.Lock()


class JobParamsError(CairnError):
    status = 422


class JobFailedError(CairnError):
    """A job ended without succeeding (it failed, or was cancelled): its error says why, and
    what was undone."""
    status = 409

    def __init__(self, job: JobRecord):
        super().__init__(f"{job.kind} job {job.id} {job.state}: {job.error}")
        self.job_id = job.id
        self.state = job.state
        self.error = job.error


class ClaimLostError(CairnError):
    """The job was taken over (its claim's token moved on): this runner must stop writing."""
    status = 409


class JobEngine(JobCatalog):
    """Runs jobs, and finds and lists them as its JobCatalog does (get, page, page_events)."""

    def __init__(self, catalog: sessionmaker[Session], events: EventLog, kinds: MutableMapping[str, JobKind[Any]],
                 nodes: Nodes | None = None):
        super().__init__(catalog)
        self.events = events
        self.kinds = kinds   # not copied: the appliance's are imported when first looked up (context.py)
        self.nodes = nodes or Nodes(catalog)
        self.capacity = Capacity()
        self._queues = ResourceQueues(self._run)
        self._cancels: dict[str, threading.Event] = {}
        # The jobs of this process a caller awaits (submit(awaited=True)): the error a step raised.
        self._raised: dict[str, Exception | None] = {}
        self._lock = threading.Lock()
        self._ended = threading.Condition()   # notified when a job of this engine ends

    # -- asking ---------------------------------------------------------------------------------

    def submit(self, kind: str, params: BaseModel | Mapping[str, Any], policy_id: str | None = None,
               limits: dict[str, int] | None = None, role: Role | None = None, awaited: bool = False) -> JobRecord:
        """Queue a job of `kind` with its parameters (the kind's model, or what validates into it),
        to run in this process. Parameters that do not validate, a `role` (the submitter's; None:
        the appliance itself, e.g. its scheduler, or the local CLI) below what the plan needs, and
        what the kind's `admit` refuses are refused now, before anything is queued.
        `awaited`: the caller waits for the job's end with `outcome`, which then raises the error
        its failed step raised."""
        with self.catalog.begin() as s:
            rec = self.submit_in(s, kind, params, policy_id, limits, role)
        if awaited:
            with self._lock:
                self._raised[rec.id] = None
        self.queue(rec)
        return rec

    def submit_in(self, session: Session, kind: str, params: BaseModel | Mapping[str, Any],
                  policy_id: str | None = None, limits: dict[str, int] | None = None,
                  role: Role | None = None) -> JobRecord:
        """`submit`, written in the caller's transaction with what else it writes (a scheduled
        run, with the policy's mark): the job exists if and only if that commits. Once it has,
        `queue` it; if this process dies first, it is recovered like any job of a dead runner."""
        job_kind = self._kind(kind)
        model = self._params(kind, job_kind, params)
        plan = job_kind.plan(model)
        if role is not None and not role.allows(plan.needs):
            raise ForbiddenError(f"a {kind} job with these parameters needs an {plan.needs.value}, not a {role.value}")
        if job_kind.admit is not None:
            job_kind.admit(model)
        self.nodes.announce()
        rec = JobRecord(id=uuid.uuid4().hex[:16], kind=kind, resource=plan.resource, state=JobState.QUEUED,
                        params=model.model_dump(mode="json"), limits={**plan.limits, **(limits or {})}, memo={},
                        policy_id=policy_id, created_at=utcnow(), **self.nodes.me.columns(),
                        steps=[{"name": s.name, "state": StepState.PENDING, "error": None} for s in plan.steps])
        _RUN_HERE.add(rec.id)
        session.add(rec)
        claims.register(session, rec.resource)
        return rec

    def queue(self, rec: JobRecord) -> None:
        """Run a job recorded by `submit_in` (its transaction committed) on its resource's worker,
        once the running jobs it cuts short (JobPlan.cuts_short) were told to stop."""
        self._cut_short(rec)
        self._queues.submit(rec.resource, rec.id)

    def _cut_short(self, rec: JobRecord) -> None:
        _, plan = self._rebuild(rec)
        if not plan.cuts_short:
            return
        with self.catalog() as s:
            running = list(s.scalars(select(JobRecord.id).where(
                JobRecord.resource == rec.resource, JobRecord.kind.in_(plan.cuts_short),
                JobRecord.state == JobState.RUNNING, JobRecord.cancel_requested.is_(False))))
        for job_id in running:
            try:
                self.cancel(job_id)
            except ConflictError:
                continue   # it ended, or began undoing a failure, meanwhile
            self.events.emit("job.cut_short", f"cut short by {rec.kind} job {rec.id}", resource=rec.resource,
                             job_id=job_id)

    async def outcome(self, job_id: str) -> JobRecord:
        """Wait, without holding a thread, for the end of a job this process runs and was
        submitted `awaited`; its record once it succeeded. If a step failed, the error that step
        raised is raised here, as the service called directly would have raised it (its kind,
        and so its status: appliance/error_statuses.py); a job that ended otherwise (cancelled,
        or interrupted) raises JobFailedError."""
        try:
            while (rec := await asyncio.to_thread(self.get, job_id)).state not in FINISHED_STATES:
                await asyncio.sleep(AWAIT_INTERVAL)
            await asyncio.to_thread(self.settle, job_id)
        finally:
            with self._lock:
                raised = self._raised.pop(job_id, None)
        if raised is not None:
            raise raised
        if rec.state != JobState.SUCCEEDED:
            raise JobFailedError(rec)
        return rec

    def run_to_end(self, kind: str, params: BaseModel | Mapping[str, Any]) -> JobRecord:
        """`submit` (awaited) and `outcome`, for a caller with no event loop of its own (the local
        CLI): the job's record once it succeeded, or the error its step raised."""
        return asyncio.run(self.outcome(self.submit(kind, params, awaited=True).id))

    def _failed_with(self, job_id: str, error: Exception) -> None:
        """A step of the job failed with `error`: kept for the caller that awaits the job, if one does."""
        with self._lock:
            if job_id in self._raised:
                self._raised[job_id] = error

    def _reread(self, job_id: str) -> JobRecord:
        """`get` for a runner: waits out an outage of the catalog (CATALOG_OUTAGE)."""
        return self._through_outage(lambda: self.get(job_id))

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job is cancelled at once; a running one stops at its next step or progress report
        and undoes what it did."""
        with self.catalog.begin() as s:
            rec = s.get(JobRecord, job_id)
            if rec is None:
                raise NotFoundError(f"no job {job_id}")
            if rec.state in FINISHED_STATES:
                raise ConflictError(f"job {job_id} has already {rec.state}")
            if rec.state == JobState.UNDOING:
                raise ConflictError(f"job {job_id} is already undoing its steps")
            rec.cancel_requested = True
        if not self._finish(job_id, JobState.CANCELLED, error="cancelled before it started",
                            if_state=JobState.QUEUED):
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
        self.settle(job_id)
        return rec

    def settle(self, job_id: str, timeout: float = SETTLE_TIMEOUT) -> None:
        """Once a job is finished: wait for this process's worker to let go of it (queue.settle)."""
        self._queues.settle(job_id, timeout)

    def active(self) -> list[JobRecord]:
        with self.catalog() as s:
            return list(s.scalars(select(JobRecord).where(JobRecord.state.in_(ACTIVE_STATES))))

    def recover(self, other_nodes: bool = True) -> list[str]:
        """Take over the jobs whose runner died: queued ones run, interrupted ones are rolled back
        or resumed (on their resource's queue, so in order with new work). Returns their ids.
        Without `other_nodes`, only this node's: the jobs of dead nodes are the leader's."""
        with self.catalog() as s:
            candidates = list(s.scalars(select(JobRecord).where(JobRecord.state.in_(ACTIVE_STATES))
                                        .order_by(JobRecord.created_at, JobRecord.id)))
        if not other_nodes:
            candidates = [rec for rec in candidates if self.nodes.judged_by_pid(rec.runner_node)]
        orphans = [rec for rec in candidates if self._runner_gone(rec) and self._adopt(rec)]
        # Interrupted ones first: they hold their resource, and queued ones wait for it.
        for rec in sorted(orphans, key=lambda r: r.state not in HOLDING_STATES):
            self._queues.submit(rec.resource, rec.id)
        return [rec.id for rec in orphans]

    # -- running --------------------------------------------------------------------------------

    def _kind(self, kind: str) -> JobKind[Any]:
        if kind not in self.kinds:
            raise NotFoundError(f"no job kind {kind!r}; known: {', '.join(sorted(self.kinds))}")
        return self.kinds[kind]

    @staticmethod
    def _params(kind: str, job_kind: JobKind[Any], params: BaseModel | Mapping[str, Any]) -> BaseModel:
        if isinstance(params, job_kind.params):
            return params
        if isinstance(params, BaseModel):
            raise TypeError(f"a {kind} job takes {job_kind.params.__name__}, not {type(params).__name__}")
        try:
            return job_kind.params.model_validate(params)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'params'}: {x['msg']}" for x in e.errors())
            raise JobParamsError(f"{kind} job: {problems}") from e

    def _rebuild(self, rec: JobRecord) -> tuple[BaseModel, JobPlan]:
        """The job's parameters and plan, rebuilt from what is stored (validated again)."""
        job_kind = self._kind(rec.kind)
        params = self._params(rec.kind, job_kind, rec.params)
        return params, job_kind.plan(params)

    def _runner_gone(self, rec: JobRecord) -> bool:
        """Whether the runner of the job (or its runner to be) has died: on this node, its process
        (pid and start); on another, the whole node (nodes.py). A job of this very process that
        none of its engines runs was left by one that stopped (tests), or given up when the
        catalog was lost, and counts as orphaned too."""
        if not self.nodes.judged_by_pid(rec.runner_node):
            return not self.nodes.alive(rec.runner_node or "")
        if ours(rec.runner_pid, rec.runner_start):
            return rec.id not in _RUN_HERE
        return not alive(rec.runner_pid, rec.runner_start)

    def _adopt(self, rec: JobRecord) -> bool:
        """Make an orphaned job this process's, unless another process took it over first (its
        runner columns are no longer those `rec` read)."""
        self.nodes.announce()
        with _ADOPTING:
            if not self._runner_gone(self.get(rec.id)):
                return False   # another thread of this process took it over meanwhile
            new = rec.id not in _RUN_HERE
            _RUN_HERE.add(rec.id)
            with self.catalog.begin() as s:
                same_runner = [getattr(JobRecord, column).is_(None) if getattr(rec, column) is None
                               else getattr(JobRecord, column) == getattr(rec, column) for column in RELEASED]
                changed = s.execute(update(JobRecord).where(JobRecord.id == rec.id, *same_runner)
                                    .values(**self.nodes.me.columns()))
            if rows_changed(changed) != 1:
                if new:
                    _RUN_HERE.discard(rec.id)
                return False
            return True

    def _run(self, job_id: str) -> None:
        """One job on its resource's worker thread, from wherever it stands, once it holds the resource."""
        cancel = threading.Event()
        with self._lock:
            self._cancels[job_id] = cancel
        try:
            with self.nodes.beating():
                fence = self._claim(job_id)
                if fence is None:
                    return
                rec = self._reread(job_id)
                if rec.cancel_requested:
                    cancel.set()
                if rec.state == JobState.QUEUED:
                    self._start(rec, fence, cancel)
                else:
                    self._after_interruption(rec, fence, cancel)
        except ClaimLostError:
            log.warning("job %s was taken over by another process: this one leaves it alone", job_id)
        except OperationalError as e:
            # The catalog stayed away for longer than a runner waits: the job is left as it stands,
            # no longer this process's, for this node's next recovery to roll back or resume.
            log.error("job %s: %s; it is left to this node's next recovery", job_id, _describe(e))
        except Exception:
            log.exception("job %s broke its runner", job_id)
            self._finish(job_id, JobState.FAILED, error="internal error running the job (see the appliance log)")
        finally:
            # Ended, taken over, or left to the next recovery: no longer run here (and the set
            # stays as small as the work in hand, however long the process lives).
            _RUN_HERE.discard(job_id)
            with self._lock:
                self._cancels.pop(job_id, None)
            with self._ended:
                self._ended.notify_all()

    def _claim(self, job_id: str) -> int | None:
        """Wait for the job's turn on its resource and claim it; returns the fencing token, or None
        if the job ended meanwhile. A job in the way whose runner died is taken over and run
        (rolled back, resumed or started) here first."""
        while True:
            outcome = self._through_outage(
                lambda: claims.try_claim(self.catalog, job_id, self.nodes.me.columns(), self._runner_gone))
            if isinstance(outcome, claims.Claimed):
                return outcome.fence
            if outcome is claims.NotNow.GONE:
                return None
            if isinstance(outcome, claims.Orphan):
                orphan = self._reread(outcome.job_id)
                if self._runner_gone(orphan) and self._adopt(orphan):
                    log.info("job %s takes over job %s, whose runner is gone", job_id, orphan.id)
                    self._run(orphan.id)
                continue
            with self._ended:
                self._ended.wait(POLL_INTERVAL)

    def _start(self, rec: JobRecord, fence: int, cancel: threading.Event) -> None:
        if cancel.is_set():
            self._finish(rec.id, JobState.CANCELLED, error="cancelled before it started", if_state=JobState.QUEUED)
            return
        params, plan = self._rebuild(rec)
        with self.capacity.hold(rec.limits, cancel) as granted:
            if not granted:
                self._finish(rec.id, JobState.CANCELLED, error="cancelled while waiting for capacity",
                             if_state=JobState.QUEUED)
                return
            if not self._begin(rec, fence):
                return   # cancelled meanwhile, by another process
            asyncio.run(_Execution(self, rec, params, plan, fence, cancel).run())

    def _after_interruption(self, rec: JobRecord, fence: int, cancel: threading.Event) -> None:
        params, plan = self._rebuild(rec)
        execution = _Execution(self, rec, params, plan, fence, cancel)
        if plan.after_interruption == "resume" and rec.state == JobState.RUNNING and not rec.cancel_requested:
            self._through_outage(lambda: self.events.emit(
                "job.resumed", f"{rec.kind} job resumed after its runner stopped", resource=rec.resource,
                job_id=rec.id))
            asyncio.run(execution.run())
        else:
            reason = "interrupted: the process running it stopped"
            if rec.state == JobState.UNDOING:   # it died undoing a failure: that failure is the story
                reason = f"{rec.error}; the process running it stopped while it undid the steps"
            asyncio.run(execution.roll_back(reason, JobState.FAILED))

    # -- catalog --------------------------------------------------------------------------------

    def _through_outage(self, call: Callable[[], T]) -> T:
        """`call()`, tried again while the catalog does not answer (PostgreSQL restarting), for up
        to CATALOG_OUTAGE seconds. What a runner tries again is idempotent: a try whose commit went
        through but whose answer was lost leaves the next one nothing to do. (SQLite waits for its
        lock by itself, and cannot go away.)"""
        deadline = time.monotonic() + CATALOG_OUTAGE
        while True:
            try:
                return call()
            except OperationalError as e:
                if self.nodes.one_host or time.monotonic() > deadline:
                    raise
                log.warning("the catalog does not answer (%s): trying again", _describe(e))
                time.sleep(OUTAGE_RETRY)

    def _update(self, job_id: str, fence: int, **values: Any) -> JobRecord:
        def update_job() -> JobRecord:
            with self.catalog.begin() as s:
                rec = self._fenced(s, job_id, fence)
                for key, value in values.items():
                    setattr(rec, key, value)
                return rec
        return self._through_outage(update_job)

    def _set_step(self, job_id: str, fence: int, index: int, state: StepState, error: str | None = None) -> None:
        def set_step() -> None:
            with self.catalog.begin() as s:
                rec = self._fenced(s, job_id, fence)
                steps = [dict(step) for step in rec.steps]
                steps[index].update(state=state, error=error)
                rec.steps = steps
        self._through_outage(set_step)

    @staticmethod
    def _fenced(session: Session, job_id: str, fence: int) -> JobRecord:
        """The job, if this runner still holds it (its token is the job's)."""
        rec = session.get(JobRecord, job_id, with_for_update=True)
        if rec is None or rec.fence != fence:
            raise ClaimLostError(f"job {job_id} was taken over by another runner (token {fence} is stale)")
        return rec

    def _begin(self, rec: JobRecord, fence: int) -> bool:
        """queued -> running, with its job.started event, unless it is no longer queued (one
        statement: a cancel cannot slip between)."""
        def begin() -> dict[str, Any] | None:
            with self.catalog.begin() as s:
                changed = s.execute(update(JobRecord).where(JobRecord.id == rec.id, JobRecord.state == JobState.QUEUED,
                                                            JobRecord.fence == fence)
                                    .values(state=JobState.RUNNING, started_at=utcnow()))
                if rows_changed(changed) != 1:
                    return None
                return self.events.record(s, "job.started", f"{rec.kind} job started on {rec.resource}",
                                          resource=rec.resource, job_id=rec.id)
        event = self._through_outage(begin)
        if event is None:   # cancelled meanwhile, or begun by a try whose answer was lost
            now = self._reread(rec.id)
            return now.state == JobState.RUNNING and now.fence == fence
        self.events.deliver(event)
        return True

    def _finish(self, job_id: str, state: JobState, result: dict[str, Any] | None = None,
                error: str | None = None, if_state: JobState | None = None, fence: int | None = None) -> bool:
        """Record the end (unless it ended already; only if the job is still in `if_state`, and
        still runs under `fence`, when given), with its event, and free its resource, in one
        transaction; then announce it."""
        values: dict[str, Any] = {"state": state, "result": result, "error": error, "finished_at": utcnow(),
                                  **RELEASED}
        if state == JobState.SUCCEEDED:
            values["progress"] = 1.0
        stmt = update(JobRecord).where(JobRecord.id == job_id, JobRecord.state.not_in(FINISHED_STATES))
        if if_state is not None:
            stmt = stmt.where(JobRecord.state == if_state)
        if fence is not None:
            stmt = stmt.where(JobRecord.fence == fence)
        severity = (Severity.INFO if state == JobState.SUCCEEDED else Severity.WARNING
                    if state == JobState.CANCELLED else Severity.ERROR)

        def finish() -> dict[str, Any] | None:
            with self.catalog.begin() as s:
                if rows_changed(s.execute(stmt.values(**values))) != 1:
                    return None
                rec = s.get_one(JobRecord, job_id)
                claims.release(s, rec.resource, job_id)
                message = f"{rec.kind} job {state} on {rec.resource}" + (f": {error}" if error else "")
                return self.events.record(s, f"job.{state}", message, severity=severity, resource=rec.resource,
                                          job_id=job_id, data={"result": result} if result else None)
        event = self._through_outage(finish)
        if event is None:
            return False
        self.events.deliver(event)
        return True


class _Execution:
    """One pass over a job's steps (fresh or resumed), with the rollback that follows a failure,
    under the fencing token its runner claimed the resource with."""

    def __init__(self, engine: JobEngine, rec: JobRecord, params: BaseModel, plan: JobPlan, fence: int,
                 cancel: threading.Event):
        self.engine = engine
        self.rec = rec
        self.plan = plan
        self.fence = fence
        self.cancel = cancel
        self.states = [StepState(step["state"]) for step in rec.steps]
        self.throttle = Throttle(PROGRESS_INTERVAL)
        self.current = 0
        self.ctx = StepContext(rec.id, params, dict(rec.memo), self._save_memo, self._report, cancel)

    async def run(self) -> None:
        for index, step in enumerate(self.plan.steps):
            if self.states[index] == StepState.DONE:
                continue
            self.current = index
            if self.engine._reread(self.rec.id).cancel_requested:   # asked from another process (the CLI)
                self.cancel.set()
            try:
                self.ctx.check_cancelled()
                self._step_state(index, StepState.RUNNING)
                await step.run(self.ctx)
            except BaseException as e:
                cancelled = isinstance(e, JobCancelled)
                if isinstance(e, Exception) and not cancelled:
                    self.engine._failed_with(self.rec.id, e)
                self._step_state(index, StepState.CANCELLED if cancelled else StepState.FAILED, _describe(e))
                await self.roll_back(_describe(e), JobState.CANCELLED if cancelled else JobState.FAILED)
                return
            self._step_state(index, StepState.DONE)
            self._report(1.0)
        self.engine._finish(self.rec.id, JobState.SUCCEEDED, result=self.ctx.result or None, fence=self.fence)

    async def roll_back(self, reason: str, final_state: JobState) -> None:
        """Undo, newest first, every step that started (an interrupted one may be half-done)."""
        self.engine._update(self.rec.id, self.fence, state=JobState.UNDOING, error=reason)
        problems = []
        for index in reversed(range(len(self.plan.steps))):
            step = self.plan.steps[index]
            if self.states[index] in (StepState.PENDING, StepState.UNDONE):
                continue
            if step.undo is None:
                continue
            try:
                await step.undo(self.ctx)
            except Exception as e:
                log.exception("undo of step %s of job %s failed", step.name, self.rec.id)
                problems.append(f"undo of {step.name} failed: {_describe(e)}")
                self._step_state(index, StepState.UNDO_FAILED, _describe(e))
                continue
            self._step_state(index, StepState.UNDONE)
        error = reason + ("; " + "; ".join(problems) if problems else "; undone")
        self.engine._finish(self.rec.id, final_state, error=error, fence=self.fence)

    def _step_state(self, index: int, state: StepState, error: str | None = None) -> None:
        self.states[index] = state
        self.engine._set_step(self.rec.id, self.fence, index, state, error)
        self.engine.events.publish({"kind": "job.step", "job_id": self.rec.id, "resource": self.rec.resource,
                                    "data": {"step": self.plan.steps[index].name, "state": state}})

    def _save_memo(self, memo: dict[str, Any]) -> None:
        self.engine._update(self.rec.id, self.fence, memo=memo)

    def _report(self, fraction: float, detail: dict[str, Any] | None = None) -> None:
        """Overall progress from the steps' weights; written now and then, published each time
        (with the step's `detail`, for a follower's progress bars)."""
        weights = [s.weight for s in self.plan.steps]
        done = sum(w for w, state in zip(weights, self.states, strict=True) if state == StepState.DONE)
        current = weights[self.current] * fraction * (self.states[self.current] != StepState.DONE)
        overall = (done + current) / sum(weights)
        if fraction >= 1.0 or self.throttle():
            rec = self.engine._update(self.rec.id, self.fence, progress=overall)
            if rec.cancel_requested:
                self.cancel.set()
        data: dict[str, Any] = {"progress": overall, "step": self.plan.steps[self.current].name}
        if detail:
            data["detail"] = detail
        self.engine.events.publish({"kind": "job.progress", "job_id": self.rec.id, "resource": self.rec.resource,
                                    "data": data})


def _describe(e: BaseException) -> str:
    if isinstance(e, OperationalError):   # the driver's own words, without SQLAlchemy's statement and link
        return f"the catalog could not be reached: {str(e.orig).strip() or type(e.orig).__name__}"
    return str(e) or type(e).__name__
