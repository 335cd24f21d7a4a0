"""The tables of notifications: where messages go, which alarms send them, what fired, what is owed.

Alarms and the outbox live in the catalog, not in memory, so an alarm raised by the CLI is
seen by the server, a condition that lasts across a restart is not announced twice, and a
message whose receiver was down is still delivered after Cairn restarts.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class NotificationTargetRecord(Base):
    """A webhook or a mail recipient list; its secret (the webhook's HMAC key, the SMTP password)
    is only ever stored sealed (access/secrets.py)."""
    __tablename__ = "notification_targets"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))            # webhook | email
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # webhook: {url}; email: {host, port, starttls, sender, recipients, username, ca_file}
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sealed_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationRuleRecord(Base):
    """An alarm rule as the admin set it; a rule kind without a row runs with its defaults."""
    __tablename__ = "notification_rules"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)   # rules.RuleKind
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    targets: Mapped[list[str]] = mapped_column(JSON, default=list)   # empty: every enabled target


class NotificationSettingRecord(Base):
    """Appliance-wide notification settings by name: the quiet hours, and how far the event log was read."""
    __tablename__ = "notification_settings"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AlarmRecord(Base):
    """One episode of a condition: from the moment it was found until it cleared."""
    __tablename__ = "alarms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(32), index=True)
    key: Mapped[str] = mapped_column(String(255), index=True)       # the condition: "backup.failed:vm:web1"
    # The key while the alarm fires, NULL once resolved: unique, so a condition fires once at a time
    # even when two processes find it together.
    active_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    severity: Mapped[str] = mapped_column(String(16))                # warning | error
    resource: Mapped[str | None] = mapped_column(String(160), nullable=True, index=True)
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DeliveryRecord(Base):
    """One message owed to one target (the outbox); retried with back-off until delivered or abandoned."""
    __tablename__ = "notification_outbox"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)    # also the receiver's dedup id
    target: Mapped[str] = mapped_column(String(63), index=True)
    alarm_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    event: Mapped[str] = mapped_column(String(16))                   # firing | resolved
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)       # pending | delivered | abandoned
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # A sender holds the message until then, so two processes never send it twice at once.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
