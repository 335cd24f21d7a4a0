"""Block jobs driven explicitly: never finalized or dismissed behind our back, so a failure is
seen (and the job cleared) by whoever started it, and events say when to look again."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from vmm import JobFailedError, QMPCommandError, QMPSession

# Long enough for a large commit under a rate limit; a job that hangs longer is a bug to see.
JOB_TIMEOUT = 24 * 3600.0


async def run_create_job(qmp: QMPSession, job_id: str, options: dict[str, Any]) -> None:
    """blockdev-create, waited for and dismissed (it never dismisses itself)."""
    async with _dismissed(qmp, job_id):
        await qmp.execute("blockdev-create", {"job-id": job_id, "options": options})
        await qmp.wait_job(job_id, "concluded", JOB_TIMEOUT)


async def run_block_job(qmp: QMPSession, command: str, job_id: str, args: dict[str, Any],
                        on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run block-commit / block-stream to the end: `created → running [→ ready → job-complete]
    → pending → job-finalize → concluded → job-dismiss`.

    `on_ready` (for jobs that reach READY, i.e. an active-layer commit) runs right before
    job-complete, while the job still mirrors every guest write. If anything fails the job is
    cancelled, so the graph stays as it was.
    """
    async with _dismissed(qmp, job_id):
        await qmp.execute(command, {**args, "job-id": job_id, "auto-finalize": False, "auto-dismiss": False})
        try:
            if on_ready is not None:
                await qmp.wait_job(job_id, "ready", JOB_TIMEOUT)
                await on_ready()
                await qmp.execute("job-complete", {"id": job_id})
            await qmp.wait_job(job_id, "pending", JOB_TIMEOUT)
            await qmp.execute("job-finalize", {"id": job_id})
            await qmp.wait_job(job_id, "concluded", JOB_TIMEOUT)
        except BaseException:
            await _cancel(qmp, job_id)
            raise


async def cancel_job(qmp: QMPSession, job_id: str) -> None:
    """Cancel a job someone else started and left (and dismiss it)."""
    async with _dismissed(qmp, job_id):
        await _cancel(qmp, job_id)


async def _cancel(qmp: QMPSession, job_id: str) -> None:
    try:
        await qmp.execute("job-cancel", {"id": job_id})
    except QMPCommandError:
        return              # already concluded (it failed by itself)
    with suppress(JobFailedError):      # a cancelled job concludes with an error
        await qmp.wait_job(job_id, "concluded", JOB_TIMEOUT)


@asynccontextmanager
async def _dismissed(qmp: QMPSession, job_id: str) -> AsyncIterator[None]:
    try:
        yield
    finally:
        jobs = await qmp.execute("query-jobs")
        if any(j["id"] == job_id and j["status"] == "concluded" for j in jobs):
            await qmp.execute("job-dismiss", {"id": job_id})
