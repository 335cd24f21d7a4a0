"""Resource claims: one job at a time per resource, whichever process runs it.

Every process that runs jobs (`cairn serve`, a CLI command following its job, a script) runs
the jobs it submitted, on a worker per resource. Before a job starts, its worker claims the
resource in the catalog, in one transaction that reads and writes the claim together:

  - on SQLite the transaction begins with `BEGIN IMMEDIATE`, which takes the database's write
    lock first, so two processes can never both read "free" and both claim;
  - on PostgreSQL the claim's row is read `FOR UPDATE`: a second claimer waits for the first
    to commit, then reads what it wrote.

A job may claim when the claim is free (or already its own: a job taken over after its process
died) and, if it has not started yet, when it is the oldest queued job of its resource, so
jobs start in submission order across processes. Otherwise its worker waits and asks again
(`NotNow.WAIT`); a job that holds or heads the resource but whose process is gone is reported
(`orphan`) for the asker to take over (JobEngine), so the work of a process that died is
finished or undone by the next one that needs the resource.

Each claim and takeover increases the claim's `token`, the fencing token the job runs under
(JobRecord.fence): a runner whose token is no longer the job's has lost the job and stops
writing (JobEngine's writes check it).

Several `cairn serve` nodes on one PostgreSQL claim the same way: a job runs in the process
that submitted it, on whichever node that is (the one that answered the API call, the leader
for a scheduled run), and the claim row serializes the nodes' jobs per resource. Nodes do not
pick each other's queued work from a shared queue (with `FOR UPDATE SKIP LOCKED`): a job's
follower, its capacity limits and its helpers are where it was submitted, and the only work
that moves is a dead runner's, which whoever needs the resource, or the leader, takes over
(nodes.py says when a runner on another node counts as dead).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from importlib import import_module
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import Base, utcnow

from .records import FINISHED_STATES, JobRecord, JobState, ResourceClaimRecord


@dataclass(frozen=True)
class Claimed:
    """The job holds its resource, under fencing token `fence`."""
    fence: int


@dataclass(frozen=True)
class Orphan:
    """Job `job_id`, in the way (holding or heading the resource), has lost its process."""
    job_id: str


class NotNow(Enum):
    WAIT = "another job holds or heads the resource: ask again once it may have moved on"
    GONE = "the job has finished (cancelled while it waited): there is nothing to run"


Outcome = Claimed | Orphan | NotNow


@contextmanager
def exclusive(catalog: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction whose reads are not overtaken by another claimer's writes (see the module)."""
    with catalog() as session:
        if session.get_bind().dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        yield session
        session.commit()


def register(session: Session, resource: str) -> None:
    """The resource's claim row, made free if it does not exist yet (with the job's submission):
    claimers lock that row, and a row that does not exist cannot be locked."""
    insert_missing(session, ResourceClaimRecord, resource=resource, job_id=None, token=0)


def insert_missing(session: Session, table: type[Base], **values: Any) -> None:
    """Insert the row `values` describe unless a row with its primary key exists: two processes
    that both find it missing both insert, and neither fails."""
    # The catalog's dialect's INSERT, imported by its name: a SQLite catalog never loads PostgreSQL's.
    dialect: Any = import_module(f"sqlalchemy.dialects.{session.get_bind().dialect.name}")
    insert = dialect.insert
    session.execute(insert(table).values(**values).on_conflict_do_nothing())


def try_claim(catalog: sessionmaker[Session], job_id: str, runner: Mapping[str, Any],
              gone: Callable[[JobRecord], bool]) -> Outcome:
    """Claim the resource of job `job_id` for it, run by the process `runner` names (its runner
    columns: nodes.Runner.columns()), if it is its turn.
    `gone(job)`: whether the process that runs job `job` has died (nodes.py says how it is told)."""
    with exclusive(catalog) as s:
        job = s.get(JobRecord, job_id, with_for_update=True)
        if job is None or job.state in FINISHED_STATES:
            return NotNow.GONE
        register(s, job.resource)
        claim = s.scalars(select(ResourceClaimRecord).where(ResourceClaimRecord.resource == job.resource)
                          .with_for_update()).one()
        if claim.job_id not in (None, job.id):
            holder = s.get(JobRecord, claim.job_id)
            if holder is not None and holder.state not in FINISHED_STATES:
                return Orphan(holder.id) if gone(holder) else NotNow.WAIT
        if job.state == JobState.QUEUED:
            head = s.scalars(select(JobRecord).where(JobRecord.resource == job.resource,
                                                     JobRecord.state == JobState.QUEUED)
                             .order_by(JobRecord.created_at, JobRecord.id).limit(1)).one()
            if head.id != job.id:
                return Orphan(head.id) if gone(head) else NotNow.WAIT
        claim.job_id, claim.token, claim.claimed_at = job.id, claim.token + 1, utcnow()
        job.fence = claim.token
        for column, value in runner.items():
            setattr(job, column, value)
        return Claimed(claim.token)


def release(session: Session, resource: str, job_id: str) -> None:
    """Free the resource if job `job_id` holds it (in the transaction that records the job's end)."""
    session.execute(update(ResourceClaimRecord)
                    .where(ResourceClaimRecord.resource == resource, ResourceClaimRecord.job_id == job_id)
                    .values(job_id=None, claimed_at=None))
