"""Which process a pid names: its pid, when it started, and in which boot.

A pid alone is not a process: once it has exited the kernel hands the number to the next
one, and a record that outlives its process (a crash, a reboot) would then name a stranger.
The start time (clock ticks after boot, field 22 of /proc/PID/stat) is fixed for a process's
life and differs for the next holder of the number; the boot id tells two boots apart, whose
pids and start times both begin again from zero.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@cache
def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (in parentheses, and it may hold spaces or
    parentheses itself): the state is the first, the start time the 20th. None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2:].split()


@dataclass(frozen=True)
class ProcessId:
    pid: int
    start: int   # clock ticks after boot
    boot: str

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The process running as `pid` now, None if none does (a zombie has ended: its
        descriptors, and the locks they held, are closed)."""
        fields = stat_fields(pid)
        if fields is None or fields[0] in "ZX":
            return None
        return cls(pid, int(fields[19]), boot_id())

    @classmethod
    def me(cls) -> ProcessId:
        me = cls.of(os.getpid())
        assert me is not None
        return me

    def alive(self) -> bool:
        return ProcessId.of(self.pid) == self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessId:
        return cls(int(data["pid"]), int(data["start"]), str(data["boot"]))
