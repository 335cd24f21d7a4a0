"""Events: what happened (kept in the catalog) and what is happening (a live feed), on every node.

Lifecycle events (job started, backup done, verify found damage) are stored and published;
progress ticks are only published. Publishing reaches this process's listeners (the SSE
stream, a command's progress bars) at once and, on PostgreSQL, every other Cairn process too,
through LISTEN/NOTIFY on the channel CHANNEL:

  - a stored event is notified in the transaction that stores it, so it is heard if and only
    if it was stored, and when it was;
  - a progress tick is notified on its own (at most every RELAY_PROGRESS seconds per job: the
    other nodes' followers draw bars, they need not see every chunk), and lost, without harm,
    if the catalog does not answer.

Each `cairn serve` runs an EventRelay: one connection that LISTENs and hands what the other
processes published to its listeners. A relay that lost its connection (PostgreSQL restarted)
connects again and first reads the stored events it missed from the table; the progress ticks
of that gap are gone, the next ones follow. A SQLite catalog has one node: a command's events
reach `cairn serve`'s listeners only through the table (GET /api/v1/events).
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow

from .records import EventRecord, Severity

log = logging.getLogger("cairn.events")
CHANNEL = "cairn_events"
RELAY_PROGRESS = 0.25   # seconds between a job's progress ticks sent to the other processes
# PostgreSQL's limit on a notification's payload is 8000 bytes: a larger event goes by its id.
_PAYLOAD_LIMIT = 7900
_OWN_IDS = 10_000       # the ids of events stored here that a relay catching up skips


def event_dict(rec: EventRecord) -> dict[str, Any]:
    return {"id": rec.id, "created_at": rec.created_at.isoformat(), "kind": rec.kind, "severity": rec.severity,
            "resource": rec.resource, "job_id": rec.job_id, "message": rec.message, "data": rec.data}


class EventLog:
    def __init__(self, catalog: sessionmaker[Session]):
        self.catalog = catalog
        # Told apart from the other processes' (and other logs'), whose events a relay delivers here.
        self.origin = uuid.uuid4().hex
        self.relays = catalog.kw["bind"].dialect.name == "postgresql"
        self._listeners: set[queue.SimpleQueue[dict[str, Any]]] = set()
        self._lock = threading.Lock()
        self._progress_sent: dict[str, float] = {}
        self.own_ids: collections.deque[int] = collections.deque(maxlen=_OWN_IDS)

    def emit(self, kind: str, message: str, severity: str = Severity.INFO, resource: str | None = None,
             job_id: str | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store an event and publish it."""
        with self.catalog.begin() as s:
            event = self.record(s, kind, message, severity, resource, job_id, data)
        self.deliver(event)
        return event

    def record(self, session: Session, kind: str, message: str, severity: str = Severity.INFO,
               resource: str | None = None, job_id: str | None = None,
               data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store an event in the caller's transaction (the other processes hear it once that
        commits); `deliver` it here after the commit."""
        rec = EventRecord(kind=kind, severity=Severity(severity), resource=resource, job_id=job_id, message=message,
                          data=data or {}, created_at=utcnow())
        session.add(rec)
        session.flush()
        event = event_dict(rec)
        self.own_ids.append(rec.id)
        if self.relays:
            self._notify(session, event)
        return event

    def publish(self, event: dict[str, Any]) -> None:
        """Publish an event that is not stored (a job's progress): here, and to the other processes."""
        self.deliver(event)
        if self.relays and self._relay_due(event):
            try:
                with self.catalog.begin() as s:
                    self._notify(s, event)
            except SQLAlchemyError as e:
                log.debug("a progress tick was not sent to the other nodes: %s", e)

    def deliver(self, event: dict[str, Any]) -> None:
        """Hand an event to this process's listeners."""
        if event["kind"].startswith("job.") and event["kind"] not in ("job.progress", "job.step"):
            self._progress_sent.pop(event.get("job_id") or "", None)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.put(event)

    @contextmanager
    def listen(self) -> Iterator[queue.SimpleQueue[dict[str, Any]]]:
        """A queue receiving every event published from now on, until the block ends."""
        q: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._lock:
            self._listeners.add(q)
        try:
            yield q
        finally:
            with self._lock:
                self._listeners.discard(q)

    def _relay_due(self, event: dict[str, Any]) -> bool:
        if event["kind"] != "job.progress":
            return True
        job, now = event.get("job_id") or "", time.monotonic()
        if event["data"].get("progress", 0) < 1 and now - self._progress_sent.get(job, 0.0) < RELAY_PROGRESS:
            return False
        self._progress_sent[job] = now
        return True

    def _notify(self, session: Session, event: dict[str, Any]) -> None:
        payload = json.dumps({"origin": self.origin, "event": event}, default=str)
        if len(payload.encode()) > _PAYLOAD_LIMIT:
            payload = json.dumps({"origin": self.origin, "id": event["id"]})
        session.execute(select(func.pg_notify(CHANNEL, payload)))


class EventRelay:
    """Hands the events other Cairn processes publish (on PostgreSQL) to the listeners of `log`,
    from a thread of its own with a connection of its own, until stopped."""

    RECONNECT = 1.0   # seconds between attempts to connect again

    def __init__(self, log: EventLog):
        self.log = log
        url = log.catalog.kw["bind"].url
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_id: int | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cairn-event-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        import psycopg  # the PostgreSQL driver: only a server on PostgreSQL relays

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._catch_up()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._hear(note.payload)
            except (psycopg.Error, SQLAlchemyError) as e:
                log.warning("the event relay lost the catalog (%s): connecting again", str(e).strip())
                self._stop.wait(self.RECONNECT)

    def _catch_up(self) -> None:
        """The stored events of the other processes since the last one heard (none at the first connection)."""
        with self.log.catalog() as s:
            if self._last_id is None:
                self._last_id = s.scalar(select(func.max(EventRecord.id))) or 0
                return
            missed = list(s.scalars(select(EventRecord).where(EventRecord.id > self._last_id).order_by(EventRecord.id)))
        own = set(self.log.own_ids)
        for rec in missed:
            if rec.id not in own:
                self.log.deliver(event_dict(rec))
            self._last_id = rec.id

    def _hear(self, payload: str) -> None:
        note = json.loads(payload)
        event = note.get("event")
        if event is None:   # too large to travel: read it
            with self.log.catalog() as s:
                rec = s.get(EventRecord, note["id"])
                event = event_dict(rec) if rec else None
        if event is None:
            return
        if event.get("id") is not None:
            self._last_id = max(self._last_id or 0, event["id"])
        if note["origin"] != self.log.origin:
            self.log.deliver(event)
