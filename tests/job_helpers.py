"""Jobs in tests: waiting for the job an API call started, and a kind that only naps, for tests
of the engine across processes (a process that runs one is `python -m job_helpers URL SECONDS
[RESOURCE]`, with tests/ on its path)."""
from __future__ import annotations

import asyncio
import sys
import time

from pydantic import BaseModel, ConfigDict

from appliance.catalog.engine import open_catalog
from appliance.jobs.engine import JobEngine
from appliance.jobs.events import EventLog
from appliance.jobs.plan import JobKind, JobPlan, Step, StepContext
from appliance.jobs.records import FINISHED_STATES

FINISHED = {str(state) for state in FINISHED_STATES}


class Nap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resource: str = "vm:a"
    seconds: float = 0.5


def nap_plan(params: Nap) -> JobPlan:
    async def nap(ctx: StepContext) -> None:
        ctx.remember(napping=True)
        deadline = time.monotonic() + params.seconds
        while (left := deadline - time.monotonic()) > 0:
            ctx.progress(1 - left / params.seconds)
            await asyncio.sleep(min(left, 0.05))

    async def wake(ctx: StepContext) -> None:
        assert ctx.memo.get("napping"), "the undo sees what its step remembered, in any process"

    return JobPlan(params.resource, [Step("nap", nap, wake)])


def napping_engine(catalog_url: str) -> JobEngine:
    catalog = open_catalog(catalog_url)
    return JobEngine(catalog, EventLog(catalog), {"nap": JobKind(Nap, nap_plan)})


if __name__ == "__main__":
    url, seconds = sys.argv[1], float(sys.argv[2])
    jobs = napping_engine(url)
    job = jobs.submit("nap", Nap(seconds=seconds, resource=sys.argv[3] if len(sys.argv) > 3 else "vm:a"))
    print(job.id, flush=True)
    jobs.wait(job.id, 600)


def job_done(client, response, timeout: float = 300) -> dict:
    """The job an API call answered 202 with, once it has ended (as GET /api/v1/jobs/{id} says it)."""
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/api/v1/jobs/{response.json()['id']}").json())["state"] not in FINISHED:
        assert time.monotonic() < deadline, f"job {job['id']} still {job['state']} after {timeout} s"
        time.sleep(0.1)
    return job


def job_result(client, response, timeout: float = 300) -> dict:
    """The result of the job an API call started, which must succeed."""
    job = job_done(client, response, timeout)
    assert job["state"] == "succeeded", job["error"]
    return job["result"]
