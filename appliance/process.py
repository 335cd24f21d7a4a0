"""Is the process that claimed a piece of work (a job, a backup) still there?

A pid alone does not say: after a reboot, or once pids wrap around, the pid a job recorded may
belong to another process, and the job would wait for ever for a runner that is gone. So a claim
records the pid and when that process started: the boot it started in (the kernel's boot id) and
its start time within that boot (field 22 of /proc/PID/stat, in clock ticks). The same pid with
another start is another process.
"""
from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@cache
def _boot_id() -> str:
    return BOOT_ID.read_text().strip()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which is in parentheses and may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2:].split()


def start_of(pid: int) -> str | None:
    """When process `pid` started, as "<boot id>/<start time>"; None if there is no such process."""
    fields = _stat_fields(pid)
    # Field 22 of the whole line is the 20th after the command name (field 3, the state, is the 1st).
    return f"{_boot_id()}/{fields[19]}" if fields else None


def claim() -> dict[str, Any]:
    """The runner columns (runner_pid, runner_start) naming this process, for a record it claims."""
    return {"runner_pid": os.getpid(), "runner_start": start_of(os.getpid())}


RELEASED: dict[str, Any] = {"runner_pid": None, "runner_start": None}


def ours(pid: int | None, start: str | None) -> bool:
    return pid == os.getpid() and start == start_of(pid)


def alive(pid: int | None, start: str | None) -> bool:
    """True while the process `pid` that started at `start` runs; a zombie (killed, not yet reaped
    by its parent) counts as gone. A claim without a start was recorded by a version that did not
    record one, which an upgrade has restarted: its runner is gone."""
    if pid is None or start is None:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in "ZX" and start == f"{_boot_id()}/{fields[19]}"
