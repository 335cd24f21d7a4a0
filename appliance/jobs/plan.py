"""What a job is: an ordered list of steps, each with its undo, on one resource.

A job kind is a pydantic model of its parameters and a factory turning them into a `JobPlan`.
The parameters are stored as the model's JSON; the plan is rebuilt from them (validated again)
whenever the job runs, also in another process or after a restart, so everything a step learns
that its undo will need (a backup id, a snapshot id) goes into the job's memo, which is
persisted at once.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from appliance.access.roles import Role


class JobCancelled(Exception):
    """Raised inside a step when the job was asked to stop."""

    def __init__(self) -> None:
        super().__init__("cancelled on request")


class StepContext:
    """What a running step sees: the job's parameters and memo, progress and cancellation."""

    def __init__(self, job_id: str, params: BaseModel, memo: dict[str, Any],
                 save_memo: Callable[[dict[str, Any]], None],
                 report: Callable[[float, dict[str, Any] | None], None], cancel: threading.Event):
        self.job_id = job_id
        self.params = params
        self.memo = memo
        self.result: dict[str, Any] = {}
        self._save_memo = save_memo
        self._report = report
        self._cancel = cancel

    def remember(self, **values: Any) -> None:
        """Persist now: if the process dies in the next instant, the undo still finds these."""
        self.memo.update(values)
        self._save_memo(dict(self.memo))

    def progress(self, fraction: float, detail: dict[str, Any] | None = None) -> None:
        """Report how far the current step is (0..1), and what a follower may show besides
        (a disk's bytes: {"disk", "done", "total"}); also the point where a long step stops if
        the job was cancelled."""
        self.check_cancelled()
        self._report(min(max(fraction, 0.0), 1.0), detail)

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()


StepAction = Callable[[StepContext], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """`run` does the work; `undo` reverses it and must cope with a `run` that stopped half-way
    (the process may have died inside it). A step without undo cannot be reversed: put such
    steps last, where nothing after them can fail."""
    name: str
    run: StepAction
    undo: StepAction | None = None
    weight: float = 1.0   # share of the job's progress bar


@dataclass(frozen=True)
class JobPlan:
    resource: str
    steps: list[Step]
    # After the appliance died mid-job: undo what was done, or carry on from the interrupted step
    # (only for jobs whose steps can simply run again, like verify and GC).
    after_interruption: Literal["rollback", "resume"] = "rollback"
    limits: dict[str, int] = field(default_factory=dict)
    # The least role that may ask for this work: the plan says it, so every route that submits
    # the job (its own, or POST /api/v1/jobs) needs the same (JobEngine.submit checks it).
    needs: Role = Role.OPERATOR
    # Kinds of job on the same resource that this one cancels, once queued, if they are running,
    # rather than wait for their end: a forced stop cuts short a graceful stop that waits for its
    # guest (whose step, cancelled, ends QEMU itself: kinds/power.py).
    cuts_short: frozenset[str] = frozenset()


P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class JobKind(Generic[P]):
    """A kind of job: its parameters and how they become a plan. `plan` must not depend on the
    state of the world, since it is rebuilt to run or undo the job, maybe long after; what must
    hold when the job is asked for (the VM exists, a name is free) is checked by `admit`, once,
    before anything is queued."""
    params: type[P]
    plan: Callable[[P], JobPlan]
    admit: Callable[[P], None] | None = None


class Throttle:
    """True at most once per `interval` seconds (progress is written to the catalog, not every chunk)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True
