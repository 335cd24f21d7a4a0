"""The outbox: every message owed to a target, kept in the catalog until it is delivered.

An alarm only adds rows here (in the transaction that records it), so raising it never waits
for a receiver. The server's notifier sends what is due; a failed attempt is tried again after
a back-off that doubles up to a cap, and given up (`abandoned`) only after days. Per target,
messages go in the order they were raised: while a receiver is down, the oldest message probes
it at each back-off and the rest wait behind it, so a "resolved" never overtakes its "firing".
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import rows_changed

from .alarms import Transition, alarm_dict
from .delivery import DeliveryError
from .records import DeliveryRecord, NotificationTargetRecord

log = logging.getLogger("cairn.notifications")
LEASE = timedelta(minutes=2)   # longer than one attempt's timeouts
BATCH = 200

Send = Callable[[NotificationTargetRecord, DeliveryRecord], None]


@dataclass(frozen=True)
class Backoff:
    first_seconds: float = 15.0
    cap_seconds: float = 3600.0
    give_up_after: timedelta = timedelta(days=3)

    def delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.first_seconds * 2 ** max(attempts - 1, 0), self.cap_seconds))


def payload(transition: Transition, appliance: str) -> dict[str, Any]:
    """The message as the webhook receives it (docs/monitoring.md describes each field)."""
    alarm = transition.alarm
    return {"version": 1, "event": transition.change, "rule": alarm.rule, "severity": alarm.severity,
            "summary": alarm.summary, "resource": alarm.resource, "appliance": appliance,
            "alarm": alarm_dict(alarm)}


def enqueue(session: Session, transition: Transition, targets: list[str], appliance: str, now: datetime,
            release: datetime) -> None:
    """A message per target, to go at `release` (now, or the end of the quiet hours)."""
    body = payload(transition, appliance)
    for target in targets:
        session.add(DeliveryRecord(id=uuid.uuid4().hex, target=target, alarm_id=transition.alarm.id,
                                   event=transition.change, payload=body, state="pending", attempts=0,
                                   next_attempt_at=release, created_at=now))


class Outbox:
    def __init__(self, catalog: sessionmaker[Session], send: Send, backoff: Backoff):
        self.catalog = catalog
        self.send = send
        self.backoff = backoff

    def deliver_due(self, now: datetime) -> int:
        """Send what is due, target by target in order; returns how many were delivered."""
        with self.catalog() as s:
            pending = list(s.scalars(select(DeliveryRecord).where(DeliveryRecord.state == "pending")
                                     .order_by(DeliveryRecord.created_at, DeliveryRecord.id).limit(BATCH)))
            targets = {t.name: t for t in s.scalars(select(NotificationTargetRecord))}
        blocked: set[str] = set()
        delivered = 0
        for message in pending:
            if message.target in blocked:
                continue
            if message.next_attempt_at > now:
                if message.attempts:   # its receiver failed: the ones behind it wait
                    blocked.add(message.target)
                continue   # held by quiet hours: the ones behind it may go
            target = targets.get(message.target)
            if target is None or not target.enabled:
                self._settle(message.id, "abandoned", now, f"target {message.target} was removed or disabled")
                continue
            if not self._claim(message.id, now):
                continue
            try:
                self.send(target, message)
            except DeliveryError as e:
                blocked.add(message.target)
                self._failed(message, str(e), now)
            except Exception as e:   # a bug or an unusable target (its secret no longer opens)
                log.exception("sending notification %s to %s failed", message.id, message.target)
                blocked.add(message.target)
                self._failed(message, f"{type(e).__name__}: {e}", now)
            else:
                self._settle(message.id, "delivered", now)
                delivered += 1
        return delivered

    def _claim(self, message_id: str, now: datetime) -> bool:
        """Hold the message while it is sent (one conditional UPDATE: another process cannot also take it)."""
        with self.catalog.begin() as s:
            taken = s.execute(update(DeliveryRecord).where(
                DeliveryRecord.id == message_id, DeliveryRecord.state == "pending",
                or_(DeliveryRecord.lease_until.is_(None), DeliveryRecord.lease_until < now))
                .values(lease_until=now + LEASE))
        return rows_changed(taken) == 1

    def _failed(self, message: DeliveryRecord, error: str, now: datetime) -> None:
        attempts = message.attempts + 1
        if now - message.created_at >= self.backoff.give_up_after:
            self._settle(message.id, "abandoned", now, f"{error} (given up after {attempts} attempts)", attempts)
            return
        with self.catalog.begin() as s:
            s.execute(update(DeliveryRecord).where(DeliveryRecord.id == message.id).values(
                attempts=attempts, last_error=error, lease_until=None,
                next_attempt_at=now + self.backoff.delay(attempts)))

    def _settle(self, message_id: str, state: str, now: datetime, error: str | None = None,
                attempts: int | None = None) -> None:
        values: dict[str, Any] = {"state": state, "lease_until": None}
        if state == "delivered":
            values["delivered_at"] = now
            values["attempts"] = DeliveryRecord.attempts + 1
        if error is not None:
            values["last_error"] = error
        if attempts is not None:
            values["attempts"] = attempts
        with self.catalog.begin() as s:
            s.execute(update(DeliveryRecord).where(DeliveryRecord.id == message_id).values(**values))
