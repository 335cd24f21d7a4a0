"""`cairn job ...`: the jobs the appliance ran or runs (whoever submitted them: the API, a CLI
command, a policy), and cancelling one."""
from __future__ import annotations

import typer

from appliance.jobs.states import FINISHED_STATES, JobState

from .client import Listing
from .common import JsonOpt, emit_json, out, print_table, reports_errors, state, table
from .listing import FILTER_OPT, OFFSET_OPT, limit_option, say_page, sort_option

job_app = typer.Typer(help="List, show and cancel jobs.", no_args_is_help=True)
WORKING = (JobState.RUNNING, JobState.UNDOING)


@job_app.command("list")
@reports_errors
def job_list(filters: list[str] = FILTER_OPT, sort: str = sort_option("-created_at"), limit: int = limit_option(50),
             offset: int = OFFSET_OPT, as_json: bool = JsonOpt) -> None:
    """Jobs, newest first (whoever submitted them: a command here, the API, a policy); fields: id,
    kind, resource, state, created_at... The errors of those that failed follow the table."""
    page = state.client.jobs(Listing(filters, sort, limit, offset))
    say_page(len(page.items), offset, page.total, "jobs")
    jobs = page.items
    if as_json:
        emit_json(jobs)
        return
    listing = table("id", "kind", "state", "created", "resource", wide=("resource",))
    for j in jobs:
        listing.add_row(j.id, j.kind, f"{j.state} {j.progress:.0%}" if j.state in WORKING else j.state,
                        f"{j.created_at:%m-%d %H:%M}", j.resource)
    print_table(listing)
    for j in jobs:
        if j.error:
            out.print(f"{j.id}: {j.error}", highlight=False)


@job_app.command("show")
@reports_errors
def job_show(job_id: str, as_json: bool = JsonOpt) -> None:
    """One job with its steps."""
    job = state.client.job(job_id)
    if as_json:
        emit_json(job)
        return
    out.print(f"job {job.id}: {job.kind} on {job.resource}, {job.state} ({job.progress:.0%})", highlight=False)
    for step in job.steps:
        out.print(f"  {step.name:<12} {step.state}" + (f": {step.error}" if step.error else ""), highlight=False)
    if job.error:
        out.print(f"error: {job.error}", highlight=False)
    if job.result:
        out.print(f"result: {job.result}", highlight=False)


@job_app.command("cancel")
@reports_errors
def job_cancel(job_id: str, wait: bool = typer.Option(True, help="Wait until it has stopped and undone its steps."),
               timeout: float = typer.Option(600, help="Seconds to wait.")) -> None:
    """Stop a job: a queued one never runs, a running one stops and undoes what it did."""
    client = state.client
    job = client.cancel_job(job_id)
    if wait and job.state not in FINISHED_STATES:
        job = client.wait_job(job_id, timeout)
    out.print(f"job {job.id}: {job.state}" + (f" ({job.error})" if job.error else ""), highlight=False)


@job_app.command("recover")
@reports_errors
def job_recover(timeout: float = typer.Option(600, help="Seconds to wait for them.")) -> None:
    """Take over the jobs of an appliance process that died (`cairn serve` does this when it starts)."""
    jobs = state.this_host().jobs
    taken = jobs.recover()
    for job_id in taken:
        job = jobs.wait(job_id, timeout)
        out.print(f"job {job.id} ({job.kind} on {job.resource}): {job.state}" + (f", {job.error}" if job.error else ""))
    if not taken:
        out.print("no job was left behind")


@job_app.command("events")
@reports_errors
def job_events(job_id: str | None = typer.Argument(None, help="Only this job's events."),
               limit: int = typer.Option(50, min=1, max=1000), as_json: bool = JsonOpt) -> None:
    """Recent events (job started/finished, backup done, verify damage...), newest first."""
    events = state.client.events(job_id, limit)
    if as_json:
        emit_json(events)
        return
    for e in events:
        out.print(f"{e.created_at:%Y-%m-%d %H:%M:%S} {e.severity:<7} {e.kind:<16} {e.message}", highlight=False)
