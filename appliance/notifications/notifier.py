"""The notifier: the loop in `cairn serve` that finds conditions, raises and resolves alarms, and
empties the outbox.

Each tick reads the event log from where the last one stopped (the cursor is kept in the
catalog, so a restart neither repeats nor skips an event), runs the rules' checks that are
due, and sends the messages that are due. Nothing here runs inside the operation that caused
an alarm: a backup that fails only writes its event, and goes on failing as fast as before.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.catalog.base import utcnow
from appliance.hosts.service import HostService
from appliance.policies.service import PolicyService

from . import alarms, conditions
from .conditions import Condition
from .outbox import Backoff, Outbox, enqueue
from .records import NotificationSettingRecord
from .rules import RULES, BackupMissedParams, CertificateExpiryParams, HostUnreachableParams, RuleKind, StoreFillParams
from .service import NotificationService, release_time

if TYPE_CHECKING:
    from appliance.context import Appliance

log = logging.getLogger("cairn.notifications")
TICK_SECONDS = 5.0
EVENT_CURSOR = "event_cursor"
# Checks that cost more than a catalog query run less often than every tick.
CHECK_EVERY = {RuleKind.BACKUP_MISSED: timedelta(minutes=1), RuleKind.CERTIFICATE_EXPIRY: timedelta(hours=1)}

Clock = Callable[[], datetime]


@dataclass
class Notifier:
    service: NotificationService
    hosts: HostService
    policies: PolicyService
    store_location: str
    default_certificate: Path
    backoff: Backoff = field(default_factory=Backoff)
    clock: Clock = utcnow
    interval: float = TICK_SECONDS
    _last_check: dict[RuleKind, datetime] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def for_appliance(cls, app: Appliance, **options: Any) -> Notifier:
        return cls(app.notifications, app.hosts, PolicyService(app.catalog), app.settings.store_access().location,
                   app.settings.tls_dir / "cert.pem", **options)

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.service.catalog, self.service.send_outboxed, self.backoff)

    # -- one tick -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Events, checks, deliveries; a failing part is logged and the others still run."""
        now = self.clock()
        for part in (self.read_events, self.check, self.outbox.deliver_due):
            try:
                part(now)
            except Exception:
                log.exception("notifications: %s failed; tried again next tick", part.__name__)

    def read_events(self, now: datetime) -> None:
        """Backup jobs that failed or succeeded since the cursor: fire or resolve their alarms."""
        with self.service.catalog.begin() as s:
            cursor = s.get(NotificationSettingRecord, EVENT_CURSOR)
            if cursor is None:   # notifications start now: no alarms for history
                s.add(NotificationSettingRecord(name=EVENT_CURSOR, value={"after": conditions.newest_event(s)}))
                return
            outcomes, last = conditions.backup_outcomes(s, cursor.value["after"], now)
            targets = self.service.rule_targets(s, RuleKind.BACKUP_FAILED)
            for outcome in outcomes:
                if targets is None:
                    continue
                if outcome.failed is not None:
                    change = alarms.fire(s, outcome.failed, now)
                else:
                    change = alarms.resolve(s, conditions.vm_key(RuleKind.BACKUP_FAILED, outcome.vm), now)
                if change:
                    self._announce(s, change, targets, now)
            cursor.value = {"after": last}

    def check(self, now: datetime) -> None:
        """Run each enabled rule's check that is due and reconcile its alarms with what it found."""
        for kind in RULES:
            if kind == RuleKind.BACKUP_FAILED:
                continue   # from the event log
            params = self.service.rule(kind.value)["params"]
            every = (timedelta(seconds=HostUnreachableParams(**params).check_every_seconds)
                     if kind == RuleKind.HOST_UNREACHABLE else CHECK_EVERY.get(kind))
            if every and (last := self._last_check.get(kind)) and now - last < every:
                continue
            with self.service.catalog() as s:
                if self.service.rule_targets(s, kind) is None:
                    continue   # disabled: not checked; its alarms stay as they are
            try:
                found = list(self._find(kind, params, now))
            except Exception:
                log.exception("notifications: the %s check failed", kind.value)
                continue
            self._last_check[kind] = now
            self.reconcile(kind, found, now)

    def reconcile(self, kind: RuleKind, found: Iterable[Condition], now: datetime) -> None:
        try:
            with self.service.catalog.begin() as s:
                targets = self.service.rule_targets(s, kind) or []
                for change in alarms.reconcile(s, kind, found, now):
                    self._announce(s, change, targets, now)
        except IntegrityError:   # another process raised the same alarm first: it sends the messages
            log.info("notifications: %s alarm raised elsewhere meanwhile", kind.value)

    def _find(self, kind: RuleKind, params: dict[str, Any], now: datetime) -> Iterable[Condition]:
        if kind == RuleKind.STORE_FILL:
            return conditions.store_fill(self.store_location, StoreFillParams(**params).threshold_percent)
        if kind == RuleKind.HOST_UNREACHABLE:
            return conditions.hosts_unreachable(self.hosts)
        if kind == RuleKind.CERTIFICATE_EXPIRY:
            p = CertificateExpiryParams(**params)
            return conditions.certificate_expiry(Path(p.certificate) if p.certificate else self.default_certificate,
                                                 p.days, now)
        with self.service.catalog() as s:
            if kind == RuleKind.VERIFY_DAMAGE:
                return conditions.verify_damage(s)
            if kind == RuleKind.BOOT_TEST_FAILED:
                return conditions.boot_tests_failed(s)
            if kind == RuleKind.HA_GAVE_UP:
                return conditions.ha_gave_up(s)
            if kind == RuleKind.BACKUP_MISSED:
                grace = timedelta(minutes=BackupMissedParams(**params).grace_minutes)
                return conditions.backups_missed(s, self.policies, now, grace)
        raise AssertionError(f"no check for rule {kind}")

    def _announce(self, s: Session, change: alarms.Transition, targets: list[str], now: datetime) -> None:
        release = release_time(s, now, change.alarm.severity)
        enqueue(s, change, targets, self.service.appliance_name, now, release)

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        # The first probe of the hosts waits one period: a server that starts (or a test's) does
        # not open connections to every host before it has served anything.
        self._last_check.setdefault(RuleKind.HOST_UNREACHABLE, self.clock())
        self._thread = threading.Thread(target=self._loop, name="cairn-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)
