"""The tables of jobs, the claims that serialize them per resource, and events; and their states.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, StrEnumType, UTCDateTime, utcnow

# The states live apart from the tables, for readers without SQLAlchemy (the API's models, the CLI).
from .states import ACTIVE_STATES, FINISHED_STATES, HOLDING_STATES, JobState, Severity, StepState

__all__ = ["ACTIVE_STATES", "FINISHED_STATES", "HOLDING_STATES", "EventRecord", "JobRecord", "JobState",
           "ResourceClaimRecord", "Severity", "StepState"]


class JobRecord(Base):
    """One job: its steps run in order, each undone in reverse if a later one fails."""
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    # Jobs on one resource ("vm:web1", "store:/srv/store") run one at a time, in submission order,
    # whichever process submitted them (ResourceClaimRecord).
    resource: Mapped[str] = mapped_column(String(160), index=True)
    state: Mapped[JobState] = mapped_column(StrEnumType(JobState), index=True)
    # The kind's parameter model as JSON; validated again whenever the plan is rebuilt.
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Capacity the job needs while it runs: {"host:local": 2, "store:/srv/store": 1} (limit per key).
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # [{"name", "state": a StepState, "error"}]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # What the steps learnt (a backup id, a snapshot id): their undo needs it, also after a restart.
    memo: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    policy_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    # The process that runs it (or will: the one that submitted it), and when that process started
    # (appliance/process.py: a pid alone may be another process's by now); one that died leaves
    # the job to whoever next needs the resource, or to the next `cairn serve`.
    runner_pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    runner_start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The resource claim's fencing token this job runs under (None until it first claims).
    fence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ResourceClaimRecord(Base):
    """Who works on a resource now. A job runs only while it holds its resource's claim, taken in
    one transaction with its start (jobs/claims.py); `token` grows with every claim and takeover,
    so a runner that lost the claim can be told by its stale token."""
    __tablename__ = "resource_claims"
    resource: Mapped[str] = mapped_column(String(160), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)   # None: free
    token: Mapped[int] = mapped_column(BigInteger, default=0)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EventRecord(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)        # job.started, backup.done, verify.damage...
    severity: Mapped[Severity] = mapped_column(StrEnumType(Severity), index=True)
    resource: Mapped[str | None] = mapped_column(String(160), nullable=True, index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
