"""Is the process that claimed a piece of work (a job, a backup) still there?

A pid alone does not say: after a reboot, or once pids wrap around, the pid a job recorded may
belong to another process, and the job would wait for ever for a runner that is gone. So a claim
records the pid and when that process started: the boot it started in (the kernel's boot id) and
its start time within that boot (field 22 of /proc/PID/stat, in clock ticks). The same pid with
another start is another process.
"""
from __future__ import annotations

import os
from typing import Any

from procs.identity import boot_id, stat_fields


def start_of(pid: int) -> str | None:
    """When process `pid` started, as "<boot id>/<start time>"; None if there is no such process."""
    fields = stat_fields(pid)
    return f"{boot_id()}/{fields[19]}" if fields else None


def claim() -> dict[str, Any]:
    """The runner columns (runner_pid, runner_start) naming this process, for a record it claims."""
    return {"runner_pid": os.getpid(), "runner_start": start_of(os.getpid())}



def on_this_boot(start: str | None) -> bool:
    """Whether a recorded start is of a process of this host's running boot: only such a pid
    can be looked up here (another host's, or an earlier boot's, names nothing here)."""
    return start is not None and start.split("/", 1)[0] == boot_id()


def ours(pid: int | None, start: str | None) -> bool:
    return pid == os.getpid() and start == start_of(pid)


def alive(pid: int | None, start: str | None) -> bool:
    """True while the process `pid` that started at `start` runs; a zombie (killed, not yet reaped
    by its parent) counts as gone. A claim without a start was recorded by a version that did not
    record one, which an upgrade has restarted: its runner is gone."""
    if pid is None or start is None:
        return False
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in "ZX" and start == f"{boot_id()}/{fields[19]}"
