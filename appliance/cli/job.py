"""`cairn job ...`: the jobs the appliance ran or runs (whoever submitted them: the API, a CLI
command, a policy), and cancelling one."""
from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from appliance.catalog.query import ListQuery
from appliance.jobs.records import FINISHED_STATES, JobRecord

from .common import JsonOpt, emit_json, out, reports_errors, state
from .listing import FILTER_OPT

job_app = typer.Typer(help="List, show and cancel jobs.", no_args_is_help=True)


def job_dict(rec: JobRecord) -> dict[str, Any]:
    return {c.key: getattr(rec, c.key) for c in JobRecord.__table__.columns}


@job_app.command("list")
@reports_errors
def job_list(filters: list[str] = FILTER_OPT,
             sort: str = typer.Option("-created_at", help="fields, comma-separated; -field sorts descending"),
             limit: int = typer.Option(50, min=1, max=1000), as_json: bool = JsonOpt) -> None:
    """Jobs, newest first."""
    with state.appliance.catalog() as s:
        jobs = ListQuery.parse(limit, 0, sort, filters).run(s, JobRecord)
    if as_json:
        emit_json([job_dict(j) for j in jobs])
        return
    table = Table("id", "kind", "resource", "state", "progress", "created", "error")
    for j in jobs:
        table.add_row(j.id, j.kind, j.resource, j.state, f"{j.progress:.0%}", f"{j.created_at:%Y-%m-%d %H:%M:%S}",
                      j.error or "")
    out.print(table)


@job_app.command("show")
@reports_errors
def job_show(job_id: str, as_json: bool = JsonOpt) -> None:
    """One job with its steps."""
    job = state.appliance.jobs.get(job_id)
    if as_json:
        emit_json(job_dict(job))
        return
    out.print(f"job {job.id}: {job.kind} on {job.resource}, {job.state} ({job.progress:.0%})")
    for step in job.steps:
        out.print(f"  {step['name']:<12} {step['state']}" + (f": {step['error']}" if step.get("error") else ""))
    if job.error:
        out.print(f"error: {job.error}")
    if job.result:
        out.print(f"result: {job.result}")


@job_app.command("cancel")
@reports_errors
def job_cancel(job_id: str, wait: bool = typer.Option(True, help="Wait until it has stopped and undone its steps."),
               timeout: float = typer.Option(600, help="Seconds to wait.")) -> None:
    """Stop a job: a queued one never runs, a running one stops and undoes what it did."""
    jobs = state.appliance.jobs
    job = jobs.cancel(job_id)
    if wait and job.state not in FINISHED_STATES:
        job = jobs.wait(job_id, timeout)
    out.print(f"job {job.id}: {job.state}" + (f" ({job.error})" if job.error else ""))


@job_app.command("recover")
@reports_errors
def job_recover(timeout: float = typer.Option(600, help="Seconds to wait for them.")) -> None:
    """Take over the jobs of an appliance process that died (`cairn serve` does this when it starts)."""
    jobs = state.appliance.jobs
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
    from appliance.api.jobs import EventOut
    from appliance.jobs.records import EventRecord
    filters = [f"job_id:eq:{job_id}"] if job_id else []
    with state.appliance.catalog() as s:
        events = [EventOut.model_validate(e) for e in ListQuery.parse(limit, 0, "-id", filters).run(s, EventRecord)]
    if as_json:
        emit_json([e.model_dump(mode="json") for e in events])
        return
    for e in events:
        out.print(f"{e.created_at:%Y-%m-%d %H:%M:%S} {e.severity:<7} {e.kind:<16} {e.message}", highlight=False)
