"""The tables of jobs, the claims that serialize them per resource, and events; and their states;
the management nodes that run them, and the lease of the one that leads.
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
    # The process that runs it (or will: the one that submitted it): on which node (NodeRecord;
    # None: a job of a version before nodes, on the one node there was), and on that node its pid
    # and when it started (appliance/process.py: a pid alone may be another process's by now). A
    # runner that died leaves the job to whoever next needs the resource, to its node's next
    # `cairn serve`, or to the leader once the node itself is dead (jobs/nodes.py).
    runner_node: Mapped[str | None] = mapped_column(String(64), nullable=True)
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


class NodeRecord(Base):
    """A management node: the Cairn processes of one host under one name (jobs/nodes.py). It is
    alive while its heartbeat, written by any of its processes that runs jobs, is younger than
    the lease; its jobs are then its own to recover."""
    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The host's boot when the node last beat (/proc/sys/kernel/random/boot_id): one name beaten
    # from two hosts is refused, since a node judges its own runners by their pids.
    boot_id: Mapped[str] = mapped_column(String(64))
    # The node's `cairn serve`, if one runs (pid and start, appliance/process.py): a second one
    # on a SQLite catalog is refused; where it listens, for people.
    serve_pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    serve_start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The catalog's own clock (PostgreSQL's now()), so the nodes' clocks need not agree.
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LeaderLeaseRecord(Base):
    """The one row saying which `cairn serve` leads (runs the scheduler, HA and the recovery of
    dead nodes' jobs) and until when; `term` grows with every new leader and is the fencing token
    a leader's writes are checked against (jobs/nodes.py)."""
    __tablename__ = "leader_lease"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)   # always 1
    node: Mapped[str | None] = mapped_column(String(64), nullable=True)   # None: nobody leads
    pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    term: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
