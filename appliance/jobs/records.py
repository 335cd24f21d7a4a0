"""The tables of jobs and events.
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

from appliance.catalog.base import Base, UTCDateTime, utcnow


class JobRecord(Base):
    """One job: its steps run in order, each undone in reverse if a later one fails."""
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    # Jobs on one resource ("vm:web1", "store") run one at a time, in submission order.
    resource: Mapped[str] = mapped_column(String(160), index=True)
    # queued | running | undoing | succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Capacity the job needs while it runs: {"host:local": 2, "store:/srv/store": 1} (limit per key).
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # [{"name", "state": pending|running|done|undone|undo_failed, "error"}]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # What the steps learnt (a backup id, a snapshot id): their undo needs it, also after a restart.
    memo: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    policy_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    # The process running it, and when that process started (appliance/process.py).
    runner_pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    runner_start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EventRecord(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)        # job.started, backup.done, verify.damage...
    severity: Mapped[str] = mapped_column(String(16), index=True)    # info | warning | error
    resource: Mapped[str | None] = mapped_column(String(160), nullable=True, index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
