"""The metrics only this process can know, kept in its memory: how long the API took to answer,
and how far the backups running here have read. They start from zero when the process starts
(Prometheus' rate() and increase() expect that of a counter)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics

# No `_created` series beside each counter and histogram: Prometheus does not need them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

API_LATENCY = Histogram(
    "cairn_api_request_duration_seconds", "Time the web API took to answer, by route template, method and status",
    ["method", "route", "status"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


@dataclass(frozen=True)
class BackupProgress:
    job_id: str
    vm: str
    bytes_done: int
    bytes_total: int


class RunningBackups:
    """What each backup job running in this process has read so far (fed by its progress reports)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, BackupProgress] = {}

    def report(self, job_id: str, vm: str, done: int, total: int) -> None:
        with self._lock:
            self._jobs[job_id] = BackupProgress(job_id, vm, done, total)

    def current(self, running_job_ids: set[str]) -> list[BackupProgress]:
        """Those still running, as the catalog says; the others are forgotten."""
        with self._lock:
            for job_id in set(self._jobs) - running_job_ids:
                del self._jobs[job_id]
            return list(self._jobs.values())


RUNNING_BACKUPS = RunningBackups()
