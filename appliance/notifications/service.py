"""Configuring notifications (targets, rules, quiet hours), looking at alarms and the outbox, and
sending one message to a target.

Used alike by the API and the CLI; both write the catalog, and the server's notifier
(notifier.py) reads it on its next tick. A target's secret goes in once and never comes out:
it is sealed here (access/secrets.py) and only unsealed to sign or log in.
"""
from __future__ import annotations

import socket
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.access.secrets import SecretBox
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError, NotFoundError

from .alarms import alarm_dict
from .delivery import post_webhook, send_mail
from .quiet import QuietHours
from .records import (
    AlarmRecord,
    DeliveryRecord,
    NotificationRuleRecord,
    NotificationSettingRecord,
    NotificationTargetRecord,
)
from .rules import RULES, RuleKind, Severity, rule_info, rule_params

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
QUIET_HOURS = "quiet_hours"


class WebhookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["webhook"] = "webhook"
    name: str = Field(pattern=NAME, max_length=63)
    enabled: bool = True
    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000, description="where the JSON is POSTed")
    secret: str | None = Field(None, min_length=16, max_length=256, description="HMAC-SHA256 key of the "
                               "X-Cairn-Signature header (write-only); without one, messages go unsigned")


class EmailTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["email"] = "email"
    name: str = Field(pattern=NAME, max_length=63)
    enabled: bool = True
    host: str = Field(min_length=1, max_length=253, description="SMTP server")
    port: int = Field(587, strict=True, ge=1, le=65535)
    starttls: bool = Field(True, description="upgrade to TLS before logging in (turn off only for a local relay)")
    ca_file: str | None = Field(None, description="PEM file of the CA that signed the server's certificate, "
                                "when the system's CAs do not")
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)
    recipients: list[str] = Field(min_length=1, max_length=50)
    username: str | None = Field(None, max_length=254)
    password: str | None = Field(None, max_length=1024, description="SMTP password (write-only)")


TargetSpec = Annotated[WebhookTarget | EmailTarget, Field(discriminator="kind")]
SECRET_FIELD = {"webhook": "secret", "email": "password"}


class RuleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None
    params: dict[str, Any] | None = Field(None, description="the rule's parameters (GET /notifications/rules)")
    targets: list[str] | None = Field(None, description="target names; empty: every enabled target")


def target_dict(rec: NotificationTargetRecord) -> dict[str, Any]:
    return {"name": rec.name, "kind": rec.kind, "enabled": rec.enabled, **rec.config,
            "has_secret": rec.sealed_secret is not None, "created_at": rec.created_at.isoformat()}


def delivery_dict(rec: DeliveryRecord) -> dict[str, Any]:
    return {"id": rec.id, "target": rec.target, "alarm_id": rec.alarm_id, "event": rec.event, "state": rec.state,
            "attempts": rec.attempts, "next_attempt_at": rec.next_attempt_at.isoformat(),
            "last_error": rec.last_error, "created_at": rec.created_at.isoformat(),
            "delivered_at": rec.delivered_at.isoformat() if rec.delivered_at else None,
            "summary": rec.payload.get("summary")}


def mail_subject(payload: dict[str, Any]) -> str:
    return f"[Cairn {payload['event'].upper()}] {payload['summary']}"[:200]


def mail_text(payload: dict[str, Any]) -> str:
    alarm = payload.get("alarm") or {}
    lines = [payload["summary"], "", f"appliance: {payload['appliance']}", f"event: {payload['event']}",
             f"severity: {payload['severity']}"]
    lines += [f"{name}: {alarm[name]}" for name in ("rule", "resource", "started_at", "resolved_at")
              if alarm.get(name)]
    lines += [f"{name}: {value}" for name, value in (alarm.get("details") or {}).items()]
    return "\n".join(lines) + "\n"


class NotificationService:
    def __init__(self, catalog: sessionmaker[Session], secrets: SecretBox, appliance_name: str | None = None):
        self.catalog = catalog
        self.secrets = secrets
        self.appliance_name = appliance_name or socket.gethostname()

    # -- targets --------------------------------------------------------------------------------

    def targets(self) -> list[NotificationTargetRecord]:
        with self.catalog() as s:
            return list(s.scalars(select(NotificationTargetRecord).order_by(NotificationTargetRecord.name)))

    def target(self, name: str) -> NotificationTargetRecord:
        with self.catalog() as s:
            return self._target(s, name)

    def put_target(self, spec: WebhookTarget | EmailTarget, create: bool = False) -> NotificationTargetRecord:
        """Create or replace a target; a replacement without a secret keeps the one it had."""
        secret_field = SECRET_FIELD[spec.kind]
        secret = getattr(spec, secret_field)
        config = spec.model_dump(exclude={"kind", "name", "enabled", secret_field})
        with self.catalog.begin() as s:
            rec = s.get(NotificationTargetRecord, spec.name)
            if rec is not None and create:
                raise ConflictError(f"notification target {spec.name} already exists: replace it with PUT, "
                                    "or choose another name")
            if rec is None:
                rec = NotificationTargetRecord(name=spec.name, created_at=utcnow())
                s.add(rec)
            elif rec.kind != spec.kind:
                raise ConflictError(f"target {spec.name} is a {rec.kind} target: remove it to make it a {spec.kind}")
            rec.kind, rec.enabled, rec.config = spec.kind, spec.enabled, config
            if secret is not None:
                rec.sealed_secret = self.secrets.seal(secret)
            s.flush()
            return rec

    def remove_target(self, name: str) -> NotificationTargetRecord:
        with self.catalog.begin() as s:
            rec = self._target(s, name)
            s.delete(rec)
            return rec

    def send(self, target: NotificationTargetRecord, payload: dict[str, Any], delivery_id: str) -> None:
        """One attempt; raises delivery.DeliveryError when the receiver is down or refuses."""
        secret = self.secrets.unseal(target.sealed_secret) if target.sealed_secret else None
        if target.kind == "webhook":
            post_webhook(target.config["url"], secret, payload, delivery_id)
        else:
            send_mail(target.config, secret.decode() if secret else None, mail_subject(payload), mail_text(payload))

    def send_outboxed(self, target: NotificationTargetRecord, message: DeliveryRecord) -> None:
        self.send(target, message.payload, message.id)

    def send_test(self, name: str) -> dict[str, Any]:
        """Send a test message now, past quiet hours and the outbox: the answer is the receiver's."""
        target = self.target(name)
        payload = {"version": 1, "event": "test", "rule": None, "severity": "info", "resource": None,
                   "summary": f"test message from Cairn on {self.appliance_name} to target {name}",
                   "appliance": self.appliance_name, "alarm": None}
        self.send(target, payload, uuid.uuid4().hex)
        return payload

    # -- rules ----------------------------------------------------------------------------------

    def rules(self) -> list[dict[str, Any]]:
        with self.catalog() as s:
            stored = {r.kind: r for r in s.scalars(select(NotificationRuleRecord))}
        return [self._rule_dict(kind, stored.get(kind.value)) for kind in RULES]

    def rule(self, kind: str) -> dict[str, Any]:
        info = rule_info(kind)
        with self.catalog() as s:
            return self._rule_dict(info.kind, s.get(NotificationRuleRecord, info.kind.value))

    def update_rule(self, kind: str, change: RuleUpdate) -> dict[str, Any]:
        info = rule_info(kind)
        with self.catalog.begin() as s:
            rec = s.get(NotificationRuleRecord, info.kind.value)
            if rec is None:
                rec = NotificationRuleRecord(kind=info.kind.value, enabled=True, params={}, targets=[])
                s.add(rec)
            if change.params is not None:
                merged = {**rec.params, **change.params}
                rec.params = rule_params(kind, merged).model_dump(exclude_unset=True)
            if change.targets is not None:
                known = set(s.scalars(select(NotificationTargetRecord.name)))
                if unknown := sorted(set(change.targets) - known):
                    raise NotFoundError(f"no notification target {', '.join(unknown)}: add it first "
                                        "(POST /api/v1/notifications/targets, `cairn notify target add-...`)")
                rec.targets = list(change.targets)
            if change.enabled is not None:
                rec.enabled = change.enabled
            s.flush()
            return self._rule_dict(info.kind, rec)

    def _rule_dict(self, kind: RuleKind, rec: NotificationRuleRecord | None) -> dict[str, Any]:
        info = RULES[kind]
        params = info.params.model_validate(rec.params if rec else {})
        return {"kind": kind.value, "severity": info.severity.value, "description": info.description,
                "enabled": rec.enabled if rec else True, "params": params.model_dump(),
                "targets": list(rec.targets) if rec else []}

    def rule_targets(self, s: Session, kind: RuleKind) -> list[str] | None:
        """The enabled targets the rule sends to; None when the rule is disabled."""
        rec = s.get(NotificationRuleRecord, kind.value)
        if rec is not None and not rec.enabled:
            return None
        enabled = [t.name for t in s.scalars(select(NotificationTargetRecord).where(
            NotificationTargetRecord.enabled.is_(True)).order_by(NotificationTargetRecord.name))]
        return [t for t in enabled if t in rec.targets] if rec and rec.targets else enabled

    # -- quiet hours ----------------------------------------------------------------------------

    def quiet_hours(self) -> QuietHours | None:
        with self.catalog() as s:
            return quiet_hours_in(s)

    def set_quiet_hours(self, hours: QuietHours | None) -> None:
        with self.catalog.begin() as s:
            rec = s.get(NotificationSettingRecord, QUIET_HOURS)
            if hours is None:
                if rec is not None:
                    s.delete(rec)
                return
            value = hours.model_dump(mode="json")
            if rec is None:
                s.add(NotificationSettingRecord(name=QUIET_HOURS, value=value))
            else:
                rec.value = value

    # -- what happened --------------------------------------------------------------------------

    def alarms(self, firing_only: bool = False, limit: int = 200) -> list[dict[str, Any]]:
        with self.catalog() as s:
            query = select(AlarmRecord).order_by(AlarmRecord.id.desc()).limit(limit)
            if firing_only:
                query = query.where(AlarmRecord.active_key.is_not(None))
            return [alarm_dict(a) for a in s.scalars(query)]

    def outbox(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        with self.catalog() as s:
            query = select(DeliveryRecord).order_by(DeliveryRecord.created_at.desc()).limit(limit)
            if state:
                query = query.where(DeliveryRecord.state == state)
            return [delivery_dict(d) for d in s.scalars(query)]

    @staticmethod
    def _target(s: Session, name: str) -> NotificationTargetRecord:
        rec = s.get(NotificationTargetRecord, name)
        if rec is None:
            raise NotFoundError(f"no notification target {name}; `cairn notify target list` shows them")
        return rec


def quiet_hours_in(s: Session) -> QuietHours | None:
    rec = s.get(NotificationSettingRecord, QUIET_HOURS)
    return QuietHours.model_validate(rec.value) if rec else None


def release_time(s: Session, now: datetime, severity: str) -> datetime:
    """When a message raised now goes: at once, or when the quiet hours end."""
    hours = quiet_hours_in(s)
    return hours.release(now, Severity(severity)) if hours else now
