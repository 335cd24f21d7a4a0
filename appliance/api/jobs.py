"""Jobs and events under /api/v1: list, follow, cancel, and the calls that start jobs.

Every long operation is a job (appliance/jobs/params.py lists the kinds): POST /jobs starts
any of them, and the routes of each domain (a VM's backups and snapshots, restores, clones,
the store's upkeep) start theirs through `submit_job`, the one place that checks what the
caller may see. They answer 202 with the job at once (but for a VM's start and stop, which
answer once it ended: `awaited_job`); its state moves from queued through running to
succeeded, failed or cancelled, its `result` says what it made, and the live stream
`/api/v1/events/stream?job=ID` carries its progress and ends with it.
"""
from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, create_model

from appliance.access.auth import Principal
from appliance.access.visibility import visibility, vm_visible
from appliance.catalog.query import QueryError
from appliance.context import Appliance
from appliance.errors import ConflictError, ForbiddenError, NotFoundError
from appliance.jobs.engine import JobParamsError
from appliance.jobs.params import PARAMS, BackupParams, BackupRequest, GcParams, JobParams, VerifyParams
from appliance.jobs.records import FINISHED_STATES, EventRecord, JobRecord
from chain import ChainError
from dedup import StoreError
from vmm import VMError

from .answers import raises
from .auth import Caller, still_signed_in
from .dependencies import ApplianceDep
from .listing import Query
from .models import EventOut, JobOut

# What a route that starts a job may meet before the job is queued: the caller's sight and role,
# its parameters, and what its plan checks first (the VM, its snapshot tree, the backup, the store).
SUBMIT_ERRORS = raises(NotFoundError, ConflictError, ForbiddenError, JobParamsError, VMError, ChainError, StoreError)
SIGNED_IN_CHECK = 1.0   # seconds between checks that a live stream's session or key still stands


class KindAndParams(BaseModel):
    """What every body of POST /jobs has: a kind and its parameters."""
    model_config = ConfigDict(extra="forbid")
    kind: str
    params: JobParams


def _request_of(kind: str, params: type[JobParams]) -> type[KindAndParams]:
    """{"kind": kind, "params": <its parameters>}; params may be left out when all have defaults."""
    optional = not any(field.is_required() for field in params.model_fields.values())
    name = "".join(word.capitalize() for word in kind.replace(".", "_").split("_")) + "Job"
    return create_model(name, __base__=KindAndParams, kind=(Literal[kind], ...),  # type: ignore[arg-type]
                        params=(params, Field(default_factory=params) if optional else ...))


if TYPE_CHECKING:
    JobRequest = KindAndParams
else:
    # The body of POST /jobs: one of the kinds, told apart by `kind` (a discriminated union in the OpenAPI).
    JobRequest = Annotated[Union[tuple(_request_of(kind, params) for kind, params in PARAMS.items())],  # noqa: UP007
                           Field(discriminator="kind")]


class JobRequestRoute(APIRoute):
    """A job's parameters that do not validate are said field by field in the error's message,
    as the job engine says them (the app's usual 422 keeps them in its details)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, x['loc'][1:])) or 'body'}: {x['msg']}" for x in e.errors())
                raise JobParamsError(f"the job's parameters are not valid: {problems}") from e
        return handle




def submit_job(appliance: Appliance, caller: Principal, kind: str, params: JobParams,
               awaited: bool = False) -> JobOut:
    """Every route that starts a job comes here: the VMs and the backup it names must be the
    caller's to see, the caller's role must be the one the job's plan needs (JobPlan.needs),
    whichever route, and the VMs it creates are theirs from now on (the name is held for them
    while the job waits). `awaited`: the route answers once the job ended (JobEngine.outcome)."""
    seen = visibility(appliance)
    for vm in params.vms():
        seen.check_vm(caller, vm)
    if (backup := params.backup()) is not None:
        seen.check_backup(caller, backup)
    for name in params.new_vms():
        seen.claim(caller, name)
    job = appliance.jobs.submit(kind, params, role=caller.role, awaited=awaited)
    for name in params.new_vms():
        seen.own(caller, name)
    return JobOut.model_validate(job)


async def awaited_job(appliance: Appliance, caller: Principal, kind: str, params: JobParams) -> JobRecord:
    """`submit_job`, and wait for the job's end (the request holds no thread meanwhile): its
    record once it succeeded, or the error its step raised (JobEngine.outcome). For the routes
    that answer as they did before their work was a job: a VM's start and stop."""
    job = await run_in_threadpool(submit_job, appliance, caller, kind, params, True)
    return await appliance.jobs.outcome(job.id)


router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/jobs", response_model=list[JobOut], responses=raises(QueryError))
def list_jobs(appliance: ApplianceDep, caller: Caller, query: Query, response: Response) -> list[JobOut]:
    return [JobOut.model_validate(r)
            for r in appliance.jobs.page(query, vm_visible(JobRecord.resource, caller, resource=True), response)]


# POST /jobs says which of a job's parameters do not validate as the job engine does (JobRequestRoute).
starting = APIRouter(route_class=JobRequestRoute)


@starting.post("/jobs", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def start_job(appliance: ApplianceDep, caller: Caller, body: JobRequest) -> JobOut:
    """Any kind of job, with its parameters (see the kinds in the request's schema)."""
    return submit_job(appliance, caller, body.kind, body.params)


router.include_router(starting)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=raises(NotFoundError))
def get_job(appliance: ApplianceDep, job_id: str) -> JobOut:
    return JobOut.model_validate(appliance.jobs.get(job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=raises(NotFoundError, ConflictError))
def cancel_job(appliance: ApplianceDep, job_id: str) -> JobOut:
    return JobOut.model_validate(appliance.jobs.cancel(job_id))


@router.post("/vms/{name}/backups", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def start_backup(appliance: ApplianceDep, caller: Caller, name: str, body: BackupRequest | None = None) -> JobOut:
    return submit_job(appliance, caller, "backup", BackupParams(vm=name, **(body or BackupRequest()).model_dump()))


@router.post("/store/verify-jobs", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def start_verify(appliance: ApplianceDep, caller: Caller, body: VerifyParams | None = None) -> JobOut:
    return submit_job(appliance, caller, "store.verify", body or VerifyParams())


@router.post("/store/gc-jobs", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def start_gc(appliance: ApplianceDep, caller: Caller, body: GcParams | None = None) -> JobOut:
    return submit_job(appliance, caller, "store.gc", body or GcParams())


@router.get("/events", response_model=list[EventOut], responses=raises(QueryError))
def list_events(appliance: ApplianceDep, caller: Caller, query: Query, response: Response) -> list[EventOut]:
    visible = vm_visible(EventRecord.resource, caller, resource=True)
    return [EventOut.model_validate(r) for r in appliance.jobs.page_events(query, visible, response)]


def known_job(appliance: ApplianceDep, caller: Caller, job: str | None = None) -> str | None:
    """A dependency, so an unknown (or invisible) job is a 404 before the stream starts."""
    if job is not None:
        appliance.jobs.get(job)
        visibility(appliance).check_job(caller, job)
    return job


@router.get("/events/stream", response_class=EventSourceResponse, responses=raises(NotFoundError))
async def stream_events(appliance: ApplianceDep, caller: Caller, request: Request,
                        job: str | None = Depends(known_job)) -> AsyncIterator[ServerSentEvent]:
    """Events as they happen, job progress included. With `job`, only that job's, ending when it ends.
    Events of VMs the caller may not see are left out (asked per event: VMs come and change hands).
    The stream ends once the caller's session or key does (asked every second)."""
    jobs, seen = appliance.jobs, visibility(appliance)
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
