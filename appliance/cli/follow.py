"""A command's long work as a job: submitted like the API and the scheduler submit it, then followed.

On this machine the job runs in this process (whoever submits a job runs it); through --url it
runs on the appliance. Either way it waits its turn after any other job on its resource (and
the command says so), progress bars are fed by the job's progress events (the job's own bar,
and one per disk when its steps report bytes), Ctrl-C cancels it, which undoes its steps before
the command ends, and a job that did not succeed ends the command with its error, as `cairn job
show` has it.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import typer

from appliance.api.models import JobOut
from appliance.jobs.states import JobState

from .client import JobProgress
from .common import INTERRUPTED, CliError, err, error_codes, state
from .progress import JobBars

if TYPE_CHECKING:
    from pydantic import BaseModel

# Seconds to let a cancelled job undo its steps before the command gives up waiting on it.
UNDO_TIMEOUT = 600
# A job still queued after this many seconds waits for another's: the command says which.
SAY_WAITING_AFTER = 1.0


class JobFailedError(CliError):
    """A job ended without succeeding: its error says why, and what was undone."""

    def __init__(self, job: JobOut):
        super().__init__(f"{job.kind} job {job.id} {job.state}: {job.error}")


def run_job(kind: str, params: BaseModel) -> dict[str, Any]:
    """Submit a job of `kind`, follow it to its end, and return its result once it succeeded."""
    following = state.client.run(kind, params)
    job = next(following)
    assert isinstance(job, JobOut), "a job's follower says the job first"
    submitted, said_waiting = time.monotonic(), False
    try:
        with JobBars(kind) as bars:
            for update in following:
                if isinstance(update, JobProgress):
                    bars.show(update.progress, update.step, update.detail)
                    continue
                job = update
                if job.state == JobState.QUEUED and not said_waiting and \
                        time.monotonic() - submitted > SAY_WAITING_AFTER:
                    err.print(f"job {job.id} waits for {job.resource}: another job works on it", highlight=False)
                    said_waiting = True
    except KeyboardInterrupt:
        following.close()
        job = _cancel(job)
        err.print(f"job {job.id} {job.state}: {job.error}", highlight=False)
        raise typer.Exit(INTERRUPTED) from None
    if job.state != JobState.SUCCEEDED:
        raise JobFailedError(job)
    return job.result or {}


def _cancel(job: JobOut) -> JobOut:
    err.print(f"cancelling job {job.id}; what it did is undone first", highlight=False)
    try:
        state.client.cancel_job(job.id)
    except Exception as e:   # it ended (or began undoing a failure) meanwhile
        if "ConflictError" not in error_codes(e):
            raise
    return state.client.wait_job(job.id, UNDO_TIMEOUT)
