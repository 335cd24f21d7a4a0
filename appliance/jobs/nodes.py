"""Management nodes: which are alive, which one leads, and the fencing token of what the leader writes.

A node is the Cairn processes of one host under one name ($CAIRN_NODE, else the host's name):
its `cairn serve`, and the commands run there. Several nodes share one PostgreSQL catalog; a
SQLite catalog lives on one host, so it has one node (a second `cairn serve` on it is refused).

Liveness. On PostgreSQL, every process of a node that runs jobs writes the node's heartbeat
(`heartbeat_at`, with the catalog's clock, so the hosts' clocks need not agree) every HEARTBEAT
seconds, and a node whose heartbeat is older than LEASE is dead. A job's runner is judged:
  - on its own node, by its pid and start (appliance/process.py): exact, the same kernel;
  - from another node, by its node's heartbeat: a pid of another host means nothing here.
So a name must be one host's: the host's boot id is written with each heartbeat, and a host
whose name another host beat less than LEASE ago is refused (NodeNameTakenError). A job of a
dead node is taken over by the leader (JobEngine.recover), or by whoever needs its resource
first (claims.py); a job whose runner died on a live node, by that node.

Leadership. One row, `leader_lease`, names the `cairn serve` process that leads and until when.
Every HEARTBEAT seconds each serve asks (`lead()`): the leader renews its lease for LEASE more;
another serve takes it once it has expired (or, on the holder's own node, once its process is
gone), and the term grows by one. Chosen over a PostgreSQL advisory lock held by a session:
  - a lease outlives a restart of PostgreSQL: the leader renews it once the catalog is back and
    goes on leading; a session lock is dropped with the session, every node races for it again,
    and the old leader learns it lost only when its own connection fails;
  - it needs no connection held open outside the pool (nor a pooler that keeps sessions), and
    the same row and code serve SQLite's one node;
  - the heartbeat that tells dead nodes is the same mechanism: one clock, one lease, one table.
What it costs: a leader killed outright is replaced only once its lease runs out (LEASE, plus
up to HEARTBEAT for the next ask), where a session lock would go at once.

Fencing. The term is the leader's fencing token: a write that must happen once whoever leads
(a scheduled run) checks, in its own transaction, that its term is still the lease's
(`Term.confirm`), which also locks the lease row until it commits. A takeover writes that row:
it waits for the write in flight, or the write sees the new term and does nothing. A leader
that could not renew its lease for LEASE stops its services (appliance/server/leadership.py)
before another can have taken over.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow
from appliance.errors import ConflictError
from appliance.process import alive, on_this_boot, start_of

from .claims import exclusive, insert_missing
from .records import LeaderLeaseRecord, NodeRecord

log = logging.getLogger("cairn.nodes")
LEASE = timedelta(seconds=5)   # a node, or a leader, silent for this long is dead
HEARTBEAT = 1.0                # seconds between a node's heartbeats, and between a serve's asks to lead
NODE_ENV = "CAIRN_NODE"
_LEASE_ROW = 1


def node_name() -> str:
    """This host's node name: $CAIRN_NODE, else the host's name."""
    return os.environ.get(NODE_ENV) or socket.gethostname()


def boot_id() -> str:
    """This host's running boot, as process starts record it (appliance/process.py)."""
    start = start_of(os.getpid())
    assert start is not None, "this process has no /proc entry"
    return start.split("/", 1)[0]


def catalog_now(session: Session) -> datetime:
    """The catalog's clock: PostgreSQL's, the same for every node; a SQLite catalog has one host,
    whose clock this is."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalars(select(func.clock_timestamp())).one()
    return utcnow()


def process_gone(session: Session, pid: int | None, start: str | None) -> bool:
    """Whether a process recorded by its pid and start alone (a backup's runner) is known dead:
    one of this boot that is gone, or of another boot on SQLite's one host. On PostgreSQL another
    boot may be another node's: the recovery of its job deals with what it left."""
    if on_this_boot(start) or session.get_bind().dialect.name == "sqlite":
        return not alive(pid, start)
    return False


class NodeError(ConflictError):
    """A node cannot do what it was asked because of another node; `node` names that one."""

    def __init__(self, message: str, node: str | None):
        super().__init__(message)
        self.node = node


class NodeNameTakenError(NodeError):
    """This host's node name is another live host's, or its `cairn serve` runs already."""


class NotLeaderError(NodeError):
    """A leader's write refused: its term has ended (`node` leads now, in term `term`)."""

    def __init__(self, message: str, node: str | None, term: int):
        super().__init__(message, node)
        self.term = term


@dataclass(frozen=True)
class Runner:
    """A process that runs jobs: its node, and on that node its pid and start."""
    node: str
    pid: int
    start: str | None

    def columns(self) -> dict[str, Any]:
        """As a job's runner columns."""
        return {"runner_node": self.node, "runner_pid": self.pid, "runner_start": self.start}


@dataclass(frozen=True)
class Term:
    """A leader's term: its number is the fencing token of the writes it makes as leader."""
    number: int
    node: str

    def confirm(self, session: Session) -> None:
        """Raise NotLeaderError unless this term is still the lease's; the lease row stays locked
        (shared) until the transaction ends, so no takeover commits in between. On SQLite the
        transaction must be `claims.exclusive`, which serializes every writer."""
        lease = session.scalars(select(LeaderLeaseRecord).where(LeaderLeaseRecord.id == _LEASE_ROW)
                                .with_for_update(read=True)).one_or_none()
        if lease is None or lease.term != self.number:
            leader, term = (lease.node, lease.term) if lease else (None, 0)
            raise NotLeaderError(f"node {self.node} no longer leads: its term {self.number} has ended "
                                 f"({leader or 'nobody'} leads in term {term})", leader, term)


@dataclass(frozen=True)
class NodeStatus:
    """A node as the catalog has it: alive while it beats (on SQLite: while its `cairn serve` runs)."""
    name: str
    address: str | None
    alive: bool
    heartbeat_at: datetime


@dataclass(frozen=True)
class Leader:
    """Who leads, as the lease says."""
    node: str | None
    pid: int | None
    term: int
    expires_at: datetime | None


class Nodes:
    """The management nodes as one process sees them: its own node's heartbeat, the others'
    liveness, and the leader's lease."""

    def __init__(self, catalog: sessionmaker[Session], name: str | None = None, lease: timedelta = LEASE):
        self.catalog = catalog
        self.name = name or node_name()
        self.lease = lease
        self.me = Runner(self.name, os.getpid(), start_of(os.getpid()))
        # A SQLite catalog is one host's: every runner is judged by its pid, and nobody beats.
        self.one_host = catalog.kw["bind"].dialect.name == "sqlite"
        self._beaters = 0
        self._beat_lock = threading.Lock()
        self._stop_beating = threading.Event()
        self._last_beat = 0.0

    # -- liveness ---------------------------------------------------------------------------------

    def judged_by_pid(self, node: str | None) -> bool:
        """Whether a runner on `node` is judged by its pid here (this node's, or any on SQLite's
        one host; None: recorded before nodes, by the one node there was) or by its node's heartbeat."""
        return self.one_host or node is None or node == self.name

    def alive(self, node: str) -> bool:
        """Whether node `node` beat less than LEASE ago."""
        with self.catalog() as s:
            rec = s.get(NodeRecord, node)
            return rec is not None and catalog_now(s) - rec.heartbeat_at < self.lease

    # -- heartbeat --------------------------------------------------------------------------------

    def beat(self) -> None:
        """Write this node's heartbeat now (registering the node the first time). A name another
        host beat less than LEASE ago is refused: its runners are judged by their pids on their host."""
        if self.one_host:
            return
        with exclusive(self.catalog) as s:
            now = catalog_now(s)
            insert_missing(s, NodeRecord, name=self.name, boot_id=boot_id(), heartbeat_at=now, started_at=now)
            rec = s.get_one(NodeRecord, self.name, with_for_update=True, populate_existing=True)
            if rec.boot_id != boot_id():
                if now - rec.heartbeat_at < self.lease:
                    raise NodeNameTakenError(
                        f"node name {self.name} is another host's (boot {rec.boot_id}), which beat "
                        f"{(now - rec.heartbeat_at).total_seconds():.1f} s ago: give this host a name of its own "
                        f"with ${NODE_ENV}", self.name)
                rec.boot_id, rec.started_at, rec.serve_pid, rec.serve_start = boot_id(), now, None, None
            rec.heartbeat_at = now
        self._last_beat = time.monotonic()

    def announce(self) -> None:
        """Beat now, unless this process did less than HEARTBEAT ago: before a job names this node
        as its runner's, since a node that has not beaten is a dead one to the others."""
        if time.monotonic() - self._last_beat > HEARTBEAT:
            self.beat()

    @contextmanager
    def beating(self) -> Iterator[None]:
        """The node's heartbeat is written every HEARTBEAT seconds while any block of this process
        is in here (a job that runs, a `cairn serve`), and announced before the block starts."""
        self.announce()
        with self._beat_lock:
            self._beaters += 1
            if self._beaters == 1 and not self.one_host:
                self._stop_beating = threading.Event()
                threading.Thread(target=self._keep_beating, args=(self._stop_beating,), daemon=True,
                                 name=f"cairn-heartbeat-{self.name}").start()
        try:
            yield
        finally:
            with self._beat_lock:
                self._beaters -= 1
                if self._beaters == 0:
                    self._stop_beating.set()

    def _keep_beating(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT):
            try:
                self.beat()
            except (SQLAlchemyError, NodeNameTakenError) as e:
                # Beaten again next time; past LEASE the other nodes count this one as dead, and
                # the jobs' fencing tokens stop its writes once they are taken over.
                log.warning("the heartbeat of node %s was not written: %s", self.name, e)

    # -- the serve of a node ----------------------------------------------------------------------

    def register_serve(self, address: str) -> None:
        """Record this process as its node's `cairn serve`, listening at `address`; refuse when a
        `cairn serve` of this node runs already, or any runs on a SQLite catalog (one node only)."""
        self.check_serve()
        self.beat()
        with exclusive(self.catalog) as s:
            now = catalog_now(s)
            insert_missing(s, NodeRecord, name=self.name, boot_id=boot_id(), heartbeat_at=now, started_at=now)
            self._refuse_other_serves(s)
            rec = s.get_one(NodeRecord, self.name, with_for_update=True, populate_existing=True)
            rec.serve_pid, rec.serve_start, rec.address, rec.boot_id = self.me.pid, self.me.start, address, boot_id()
            rec.heartbeat_at = rec.started_at = now

    def check_serve(self) -> None:
        """Raise NodeNameTakenError if this process may not be its node's `cairn serve` (see register_serve)."""
        with self.catalog() as s:
            self._refuse_other_serves(s)

    def _refuse_other_serves(self, s: Session) -> None:
        rows = s.scalars(select(NodeRecord).where(NodeRecord.serve_pid.is_not(None))).all()
        for rec in rows:
            if (rec.serve_pid, rec.serve_start) == (self.me.pid, self.me.start):
                continue
            if self.one_host and alive(rec.serve_pid, rec.serve_start):
                raise NodeNameTakenError(
                    f"cairn serve already runs on this SQLite catalog (pid {rec.serve_pid}): a SQLite catalog has "
                    "one management node; stop that one, or move the catalog to PostgreSQL ($CAIRN_CATALOG_URL) "
                    "to run more", rec.name)
            if rec.name == self.name and not self.one_host and self._serve_alive(s, rec):
                raise NodeNameTakenError(
                    f"node {rec.name} already has a cairn serve (pid {rec.serve_pid}, boot {rec.boot_id}): give this "
                    f"one a node name of its own with ${NODE_ENV}, or stop that one", rec.name)

    def _serve_alive(self, s: Session, rec: NodeRecord) -> bool:
        if rec.serve_pid is None:
            return False
        if on_this_boot(rec.serve_start):
            return alive(rec.serve_pid, rec.serve_start)
        return catalog_now(s) - rec.heartbeat_at < self.lease

    def status(self) -> list[NodeStatus]:
        """Every node the catalog knows, as it stands now."""
        with self.catalog() as s:
            now = catalog_now(s)
            return [NodeStatus(rec.name, rec.address, self._serve_alive(s, rec) if self.one_host
                               else now - rec.heartbeat_at < self.lease, rec.heartbeat_at)
                    for rec in s.scalars(select(NodeRecord).order_by(NodeRecord.name))]

    # -- leadership -------------------------------------------------------------------------------

    def lead(self) -> Term | None:
        """One round of the election, in one transaction: this process renews its lease, or takes
        the lease if it has run out (or its holder, on this node, is gone), in the next term.
        None: another process leads."""
        with exclusive(self.catalog) as s:
            insert_missing(s, LeaderLeaseRecord, id=_LEASE_ROW, term=0)
            lease = s.get_one(LeaderLeaseRecord, _LEASE_ROW, with_for_update=True, populate_existing=True)
            now = catalog_now(s)
            if (lease.node, lease.pid, lease.start) != (self.me.node, self.me.pid, self.me.start):
                if not self._lease_free(lease, now):
                    return None
                lease.term += 1
                lease.node, lease.pid, lease.start = self.me.node, self.me.pid, self.me.start
            lease.expires_at = now + self.lease
            return Term(lease.term, self.name)

    def _lease_free(self, lease: LeaderLeaseRecord, now: datetime) -> bool:
        if lease.node is None or lease.expires_at is None or lease.expires_at <= now:
            return True
        return self.judged_by_pid(lease.node) and not alive(lease.pid, lease.start)

    def resign(self, term: Term) -> None:
        """Give up the lease of `term` (a serve that stops), so another serve takes over at its next ask."""
        with exclusive(self.catalog) as s:
            lease = s.get(LeaderLeaseRecord, _LEASE_ROW, with_for_update=True)
            if lease is not None and lease.term == term.number and lease.pid == self.me.pid:
                lease.node = lease.pid = lease.start = lease.expires_at = None

    def leader(self) -> Leader:
        with self.catalog() as s:
            lease = s.get(LeaderLeaseRecord, _LEASE_ROW)
            if lease is None or lease.expires_at is None or lease.expires_at <= catalog_now(s):
                return Leader(None, None, lease.term if lease else 0, None)
            return Leader(lease.node, lease.pid, lease.term, lease.expires_at)
