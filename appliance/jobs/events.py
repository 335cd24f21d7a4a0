"""Events: what happened (kept in the catalog) and what is happening (a live feed).

Lifecycle events (job started, backup done, verify found damage) are stored and published;
progress ticks are only published, to whoever listens in this process (the SSE stream).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow

from .records import EventRecord, Severity


def event_dict(rec: EventRecord) -> dict[str, Any]:
    return {"id": rec.id, "created_at": rec.created_at.isoformat(), "kind": rec.kind, "severity": rec.severity,
            "resource": rec.resource, "job_id": rec.job_id, "message": rec.message, "data": rec.data}


class EventLog:
    def __init__(self, catalog: sessionmaker[Session]):
        self.catalog = catalog
        self._listeners: set[queue.SimpleQueue[dict[str, Any]]] = set()
        self._lock = threading.Lock()

    def emit(self, kind: str, message: str, severity: str = Severity.INFO, resource: str | None = None,
             job_id: str | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.catalog.begin() as s:
            rec = EventRecord(kind=kind, severity=Severity(severity), resource=resource, job_id=job_id, message=message,
                              data=data or {}, created_at=utcnow())
            s.add(rec)
            s.flush()
            event = event_dict(rec)
        self.publish(event)
        return event

    def publish(self, event: dict[str, Any]) -> None:
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
