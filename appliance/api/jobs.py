"""Jobs and events under /api/v1: list, follow, cancel, and the calls that start jobs.

Starting work (a backup, a store verify or GC) answers 202 with the job at once; its state
moves from queued through running to succeeded, failed or cancelled, and the live stream
`/api/v1/events/stream` carries its progress.
"""
from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from appliance.access.auth import Principal
from appliance.access.visibility import visibility, vm_visible
from appliance.catalog.query import ListQuery
from appliance.context import Appliance
from appliance.jobs.kinds import BackupParams, BackupRequest, GcParams, VerifyParams
from appliance.jobs.plan import FINISHED_STATES
from appliance.jobs.records import EventRecord, JobRecord

from .app import ErrorOut
from .auth import Caller, still_signed_in
from .listing import list_query

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (404, 409, 422)}
SIGNED_IN_CHECK = 1.0   # seconds between checks that a live stream's session or key still stands


class StepOut(BaseModel):
    name: str
    state: str
    error: str | None = None


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    kind: str
    resource: str
    state: str
    params: dict[str, Any]
    steps: list[StepOut]
    progress: float
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    policy_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    created_at: datetime
    kind: str
    severity: str
    resource: str | None
    job_id: str | None
    message: str
    data: dict[str, Any]


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="backup, snapshot, store.verify or store.gc")
    params: dict[str, Any] = Field(default_factory=dict)


Query = Annotated[ListQuery, Depends(list_query)]


def job_router(appliance: Appliance) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["jobs"])
    jobs = appliance.jobs
    seen = visibility(appliance)

    def submit(caller: Principal, kind: str, params: dict[str, Any]) -> JobOut:
        """Every route that starts a job comes here: the VM it names must be visible, and the
        caller's role must be the one the job's plan needs (JobPlan.needs), whichever route."""
        if isinstance(vm := params.get("vm"), str):
            seen.check_vm(caller, vm)
        return JobOut.model_validate(jobs.submit(kind, params, role=caller.role))

    @router.get("/jobs", response_model=list[JobOut], responses=ERRORS)
    def list_jobs(caller: Caller, query: Query, response: Response) -> list[JobOut]:
        mine = select(JobRecord).where(vm_visible(JobRecord.resource, caller, resource=True))
        with appliance.catalog() as s:
            return [JobOut.model_validate(r) for r in query.run(s, JobRecord, mine, response=response)]

    @router.post("/jobs", response_model=JobOut, status_code=202, responses=ERRORS)
    def start_job(caller: Caller, body: JobRequest) -> JobOut:
        return submit(caller, body.kind, body.params)

    @router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
    def get_job(job_id: str) -> JobOut:
        return JobOut.model_validate(jobs.get(job_id))

    @router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
    def cancel_job(job_id: str) -> JobOut:
        return JobOut.model_validate(jobs.cancel(job_id))

    @router.post("/vms/{name}/backups", response_model=JobOut, status_code=202, responses=ERRORS)
    def start_backup(caller: Caller, name: str, body: BackupRequest | None = None) -> JobOut:
        params = BackupParams(vm=name, **(body or BackupRequest()).model_dump())
        return submit(caller, "backup", params.model_dump(exclude_none=True))

    @router.post("/store/verify-jobs", response_model=JobOut, status_code=202, responses=ERRORS)
    def start_verify(caller: Caller, body: VerifyParams | None = None) -> JobOut:
        return submit(caller, "store.verify", (body or VerifyParams()).model_dump(exclude_none=True))

    @router.post("/store/gc-jobs", response_model=JobOut, status_code=202, responses=ERRORS)
    def start_gc(caller: Caller, body: GcParams | None = None) -> JobOut:
        return submit(caller, "store.gc", (body or GcParams()).model_dump(exclude_none=True))

    @router.get("/events", response_model=list[EventOut], responses=ERRORS)
    def list_events(caller: Caller, query: Query, response: Response) -> list[EventOut]:
        mine = select(EventRecord).where(vm_visible(EventRecord.resource, caller, resource=True))
        with appliance.catalog() as s:
            return [EventOut.model_validate(r) for r in query.run(s, EventRecord, mine, response=response)]

    def known_job(caller: Caller, job: str | None = None) -> str | None:
        """A dependency, so an unknown (or invisible) job is a 404 before the stream starts."""
        if job is not None:
            jobs.get(job)
            seen.check_job(caller, job)
        return job

    @router.get("/events/stream", response_class=EventSourceResponse, responses=ERRORS)
    async def stream_events(caller: Caller, request: Request,
                            job: str | None = Depends(known_job)) -> AsyncIterator[ServerSentEvent]:
        """Events as they happen, job progress included. With `job`, only that job's, ending when it ends.
        Events of VMs the caller may not see are left out (asked per event: VMs come and change hands).
        The stream ends once the caller's session or key does (asked every second)."""
        endings = {f"job.{state}" for state in FINISHED_STATES}
        authorization = request.headers.get("authorization")
        loop = asyncio.get_running_loop()
        checked = loop.time()
        with jobs.events.listen() as feed:
            event: dict[str, Any] | None = None
            while True:
                if loop.time() - checked >= SIGNED_IN_CHECK:
                    if not await asyncio.to_thread(still_signed_in, appliance, authorization):
                        return
                    checked = loop.time()
                if job is not None and (event is None or event["kind"] in endings) and \
                        (rec := jobs.get(job)).state in FINISHED_STATES:
                    yield ServerSentEvent(event="job.end", data=JobOut.model_validate(rec).model_dump(mode="json"))
                    return
                try:
                    event = await asyncio.to_thread(feed.get, True, 1.0)
                except queue.Empty:
                    event = None
                    continue
                if (job is None or event.get("job_id") == job) and seen.sees_resource(caller, event.get("resource")):
                    yield ServerSentEvent(event=event["kind"], data=event,
                                          id=str(event["id"]) if event.get("id") else None)

    return router
