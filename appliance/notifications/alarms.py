"""The alarm book: a condition fires once, stays quiet while it lasts, and is resolved when it clears.

Each change is a Transition (an alarm that fired or resolved), which the caller turns into
messages in the same transaction (outbox.enqueue), so an alarm and its messages are never
recorded one without the other.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from .conditions import Condition
from .records import AlarmRecord
from .rules import RuleKind

Change = Literal["firing", "resolved"]


@dataclass(frozen=True)
class Transition:
    alarm: AlarmRecord
    change: Change


def fire(session: Session, condition: Condition, now: datetime) -> Transition | None:
    """A new alarm for the condition, or None while one already fires for it."""
    if session.scalar(select(AlarmRecord.id).where(AlarmRecord.active_key == condition.key)) is not None:
        return None
    alarm = AlarmRecord(rule=condition.rule.value, key=condition.key, active_key=condition.key,
                        severity=condition.level.value, resource=condition.resource, summary=condition.summary,
                        details=condition.details, started_at=now)
    session.add(alarm)
    session.flush()   # two finders at once: the second fails here on the unique key, before any message
    return Transition(alarm, "firing")


def resolve(session: Session, key: str, now: datetime) -> Transition | None:
    alarm = session.scalars(select(AlarmRecord).where(AlarmRecord.active_key == key)).first()
    if alarm is None:
        return None
    alarm.active_key, alarm.resolved_at = None, now
    return Transition(alarm, "resolved")


def reconcile(session: Session, rule: RuleKind, found: Iterable[Condition], now: datetime) -> list[Transition]:
    """Make the rule's firing alarms exactly the conditions found: new ones fire, gone ones resolve."""
    by_key = {c.key: c for c in found}
    changes = [t for c in by_key.values() if (t := fire(session, c, now))]
    for alarm in session.scalars(select(AlarmRecord).where(AlarmRecord.rule == rule.value,
                                                           AlarmRecord.active_key.is_not(None))):
        if alarm.key not in by_key and (t := resolve(session, alarm.key, now)):
            changes.append(t)
    return changes


def alarm_dict(alarm: AlarmRecord) -> dict[str, Any]:
    return {"id": alarm.id, "rule": alarm.rule, "key": alarm.key, "severity": alarm.severity,
            "resource": alarm.resource, "summary": alarm.summary, "details": alarm.details,
            "firing": alarm.resolved_at is None, "started_at": alarm.started_at.isoformat(),
            "resolved_at": alarm.resolved_at.isoformat() if alarm.resolved_at else None}
