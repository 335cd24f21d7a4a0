"""Helpers for snapshot tests: known patterns into and out of qcow2 chains, with qemu-io."""
from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import chain.live


def has_pattern(image: str, pattern: int, offset: int, length: int) -> bool:
    """Whether the guest-visible bytes of `image` (its whole chain) are `pattern` there; -U:
    the image may be open in a running QEMU, whose flushed data this sees."""
    done = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} {length}",
                           image], check=False, capture_output=True, text=True)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def qemu_io_write(image: str, pattern: int, offset: int, length: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", image],
                   check=True, capture_output=True)


@contextmanager
def block_jobs_paused_midway(on_paused: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """The tests' pause point in a merge, instead of racing a copy against a kill: each block job
    chain/ runs in this process is paused (job-pause) as soon as QEMU reports it has copied
    something, then `on_paused` gets QEMU's record of the job (status, current-progress,
    total-progress). It stays paused until something ends it: a kill of QEMU or of the process."""
    real = chain.live.run_block_job

    async def run_paused(qmp, command, job_id, args, on_ready=None):
        execute = qmp.execute

        async def execute_then_pause(cmd, arguments=None, timeout=None):
            result = await execute(cmd, arguments, timeout)
            if cmd == command:
                while (await job_record(execute, job_id))["current-progress"] == 0:
                    await asyncio.sleep(0.01)
                await execute("job-pause", {"id": job_id})
                while (job := await job_record(execute, job_id))["status"] != "paused":
                    await asyncio.sleep(0.01)
                on_paused(job)
            return result
        qmp.execute = execute_then_pause
        try:
            await real(qmp, command, job_id, args, on_ready)
        finally:
            del qmp.execute
    chain.live.run_block_job = run_paused
    try:
        yield
    finally:
        chain.live.run_block_job = real


async def job_record(execute, job_id: str) -> dict[str, Any]:
    return next(j for j in await execute("query-jobs") if j["id"] == job_id)
