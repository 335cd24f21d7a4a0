"""A command's long work as a job: submitted like the API and the scheduler submit it, then followed.

The job runs in this process (whoever submits a job runs it), after any job another process
(`cairn serve`, another command) runs on the same resource: it waits its turn, and says so.
Progress bars are fed by the job's progress events: the job's own bar, and one per disk when
its steps report bytes. Ctrl-C cancels the job, which undoes its steps before the command
ends. A job that did not succeed ends the command with its error, as `cairn job show` has it.
"""
from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn

from appliance.units import human

from .common import err, state

if TYPE_CHECKING:
    from pydantic import BaseModel

    from appliance.jobs.engine import JobEngine
    from appliance.jobs.records import JobRecord

# Seconds to let a cancelled job undo its steps before the command gives up waiting on it.
UNDO_TIMEOUT = 600
# A job still queued after this many seconds waits for another's: the command says which.
SAY_WAITING_AFTER = 1.0
CHECK_INTERVAL = 0.5   # seconds between looks at the job's state
INTERRUPTED = 130      # the exit status after Ctrl-C (128 + SIGINT), the job cancelled


def run_job(kind: str, params: BaseModel) -> dict[str, Any]:
    """Submit a job of `kind`, follow it to its end, and return its result once it succeeded."""
    from appliance.jobs.engine import JobFailedError
    from appliance.jobs.records import JobState

    jobs = state.appliance.jobs
    with jobs.events.listen() as feed:
        job = jobs.submit(kind, params)
        try:
            with JobBars(kind) as bars:
                job = _follow(jobs, job, feed, bars)
        except KeyboardInterrupt:
            job = _cancel(jobs, job)
            err.print(f"job {job.id} {job.state}: {job.error}", highlight=False)
            raise typer.Exit(INTERRUPTED) from None
    if job.state != JobState.SUCCEEDED:
        raise JobFailedError(job)
    return job.result or {}


def _follow(jobs: JobEngine, job: JobRecord, feed: queue.SimpleQueue[dict[str, Any]], bars: JobBars) -> JobRecord:
    """Show the job's progress until it ends; its state is read when it says it ended, and every
    CHECK_INTERVAL seconds (another process may end it: a cancel before it started)."""
    from appliance.jobs.records import FINISHED_STATES, JobState

    endings = {f"job.{s}" for s in FINISHED_STATES}
    submitted = checked = time.monotonic()
    said_waiting = False
    while True:
        try:
            event = feed.get(timeout=CHECK_INTERVAL)
        except queue.Empty:
            event = None
        kind = event["kind"] if event is not None and event.get("job_id") == job.id else None
        if kind == "job.progress" and event is not None:
            bars.show(event["data"])
        if kind not in endings and time.monotonic() - checked < CHECK_INTERVAL:
            continue
        checked = time.monotonic()
        current = jobs.get(job.id)
        if current.state in FINISHED_STATES:
            return current
        if current.state == JobState.QUEUED and not said_waiting and checked - submitted > SAY_WAITING_AFTER:
            err.print(f"job {job.id} waits for {job.resource}: another job works on it", highlight=False)
            said_waiting = True


def _cancel(jobs: JobEngine, job: JobRecord) -> JobRecord:
    from appliance.errors import ConflictError

    err.print(f"cancelling job {job.id}; what it did is undone first", highlight=False)
    try:
        jobs.cancel(job.id)
    except ConflictError:   # it ended (or began undoing a failure) meanwhile
        pass
    return jobs.wait(job.id, UNDO_TIMEOUT)


class JobBars:
    """The job's progress bar, and one bar per disk whose bytes its steps report."""

    def __init__(self, kind: str):
        self.kind = kind
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[amount]}"), TimeRemainingColumn(), console=err,
                                 transient=False, disable=not err.is_terminal)
        self.job = self.progress.add_task(kind, total=1.0, amount="")
        self.disks: dict[str, TaskID] = {}

    def __enter__(self) -> JobBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def show(self, data: dict[str, Any]) -> None:
        self.progress.update(self.job, completed=data["progress"], description=f"{self.kind}: {data['step']}")
        if detail := data.get("detail"):
            disk, done, total = detail["disk"], detail["done"], detail["total"]
            if disk not in self.disks:
                self.disks[disk] = self.progress.add_task(f"  {disk}", total=total, amount="")
            self.progress.update(self.disks[disk], completed=done, total=total,
                                 amount=f"{human(done)} of {human(total)}")
