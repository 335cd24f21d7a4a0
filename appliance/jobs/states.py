"""The states of jobs and their steps, and the severity of events: plain enums, without the
tables (records.py), so what only reads them (the API's models, the CLI) needs no SQLAlchemy.
"""
from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """queued -> running -> succeeded | failed | cancelled; undoing while a failure is rolled back."""
    QUEUED = "queued"
    RUNNING = "running"
    UNDOING = "undoing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.UNDOING})
# The states of a job that holds its resource's claim: it works on the resource now.
HOLDING_STATES = frozenset({JobState.RUNNING, JobState.UNDOING})


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNDONE = "undone"
    UNDO_FAILED = "undo_failed"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
