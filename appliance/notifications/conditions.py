"""What is wrong now: the checks behind the alarm rules, each answering with a list of Conditions.

Most conditions are states that can be read again at any time — a backup marked damaged, a
filesystem too full, HA switched off after giving up — so they are read from the catalog, the
store's filesystem, the hosts and the certificate, whoever changed them (the CLI, the server,
an admin's repair). The alarm book compares the answer with what fires already (alarms.py).

A failed backup job is the exception: its undo removes the backup row it claimed, so the event
log (`job.failed`, then `backup.done` for the VM's next good backup) is its only record.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.backups.records import BackupRecord
from appliance.hosts.service import HostService, HostUnreachableError
from appliance.jobs.records import EventRecord, JobRecord
from appliance.policies.records import PolicyRecord
from appliance.policies.service import BackupPolicy, PolicyService, latest_due, policy_of
from appliance.restores.records import BootTestRecord
from appliance.vms.records import VMOptionsRecord

from .rules import RULES, RuleKind, Severity

GOOD_BACKUP = ("ok", "pruned")   # a pruned backup was good when it was made


@dataclass(frozen=True)
class Condition:
    rule: RuleKind
    key: str              # the same while the same thing is wrong: "backup.failed:vm:web1"
    summary: str
    resource: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    severity: Severity | None = None   # None: the rule's

    @property
    def level(self) -> Severity:
        return self.severity or RULES[self.rule].severity


def vm_key(rule: RuleKind, vm: str) -> str:
    return f"{rule.value}:vm:{vm}"


# -- from the event log -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupOutcome:
    vm: str
    failed: Condition | None   # None: a backup of the VM succeeded, which resolves its failure


# Events younger than this are left for the next read: on PostgreSQL an event may commit after one
# with a higher id, and the cursor must not pass it by.
SETTLE = timedelta(seconds=2)


def backup_outcomes(session: Session, after_event: int, now: datetime,
                    limit: int = 1000) -> tuple[list[BackupOutcome], int]:
    """Backup jobs that failed or succeeded in the events after `after_event`, oldest first,
    and the id of the last event read (the next call's `after_event`)."""
    outcomes = []
    last = after_event
    rows = session.scalars(select(EventRecord).where(EventRecord.id > after_event, EventRecord.created_at < now - SETTLE)
                           .order_by(EventRecord.id).limit(limit))
    for event in rows:
        last = event.id
        if event.kind not in ("job.failed", "backup.done"):
            continue
        if event.kind == "backup.done" and event.resource and event.resource.startswith("vm:"):
            outcomes.append(BackupOutcome(event.resource.removeprefix("vm:"), None))
            continue
        job = session.get(JobRecord, event.job_id) if event.job_id else None
        if event.kind == "job.failed" and job is not None and job.kind == "backup":
            vm = job.params["vm"]
            outcomes.append(BackupOutcome(vm, Condition(
                RuleKind.BACKUP_FAILED, vm_key(RuleKind.BACKUP_FAILED, vm), f"backup of VM {vm} failed: {job.error}",
                f"vm:{vm}", {"job_id": job.id, "error": job.error})))
    return outcomes, last


def newest_event(session: Session) -> int:
    return session.scalar(select(func.max(EventRecord.id))) or 0


# -- from the catalog -------------------------------------------------------------------------------

def verify_damage(session: Session) -> list[Condition]:
    damaged = {backup_id: damage for backup_id, damage in session.execute(
        select(BackupRecord.id, BackupRecord.damage).where(BackupRecord.status.in_(GOOD_BACKUP))) if damage}
    if not damaged:
        return []
    names = ", ".join(sorted(damaged)[:5]) + (" …" if len(damaged) > 5 else "")
    return [Condition(RuleKind.VERIFY_DAMAGE, f"{RuleKind.VERIFY_DAMAGE.value}:store",
                      f"verify found damage in {len(damaged)} backup(s): {names}; "
                      "`cairn store verify` lists it, a new full backup of each VM replaces it",
                      "store", {"damaged_backups": damaged})]


def boot_tests_failed(session: Session) -> list[Condition]:
    latest: dict[str, BootTestRecord] = {}
    for rec in session.scalars(select(BootTestRecord).order_by(BootTestRecord.started_at, BootTestRecord.id)):
        latest[rec.vm_name] = rec
    return [Condition(RuleKind.BOOT_TEST_FAILED, vm_key(RuleKind.BOOT_TEST_FAILED, vm),
                      f"boot test of VM {vm}'s backup {rec.backup_id} failed: {rec.reason}", f"vm:{vm}",
                      {"backup_id": rec.backup_id, "reason": rec.reason})
            for vm, rec in latest.items() if not rec.passed]


def ha_gave_up(session: Session) -> list[Condition]:
    rows = session.scalars(select(VMOptionsRecord).where(VMOptionsRecord.ha_gave_up_at.is_not(None),
                                                         VMOptionsRecord.ha_enabled.is_(False)))
    return [Condition(RuleKind.HA_GAVE_UP, vm_key(RuleKind.HA_GAVE_UP, rec.vm_name),
                      f"HA gave up restarting VM {rec.vm_name} at {rec.ha_gave_up_at:%Y-%m-%d %H:%M} UTC; "
                      "find why it crashes, then enable HA again", f"vm:{rec.vm_name}")
            for rec in rows]


def backups_missed(session: Session, policies: PolicyService, now: datetime, grace: timedelta) -> list[Condition]:
    """Each VM a backup policy selects whose last scheduled run (due at least `grace` ago) left no
    good backup started at or after it."""
    last_good = {vm: started for vm, started in session.execute(
        select(BackupRecord.vm_name, func.max(BackupRecord.started_at))
        .where(BackupRecord.status.in_(GOOD_BACKUP)).group_by(BackupRecord.vm_name))}
    found = []
    for rec in session.scalars(select(PolicyRecord).where(PolicyRecord.enabled.is_(True),
                                                          PolicyRecord.kind == "backup")):
        policy = policy_of(rec)
        assert isinstance(policy, BackupPolicy)
        due, _ = latest_due(policy.schedule, rec.created_at, now - grace)
        if due is None:
            continue
        for vm in policies.selected_vms(policy):
            last = last_good.get(vm)
            if last is None or _aware(last) < due:
                found.append(Condition(
                    RuleKind.BACKUP_MISSED, f"{RuleKind.BACKUP_MISSED.value}:{rec.name}:vm:{vm}",
                    f"policy {rec.name} was due to back up VM {vm} at {due:%Y-%m-%d %H:%M} UTC and no backup came",
                    f"vm:{vm}", {"policy": rec.name, "due": due.isoformat(),
                                 "last_good_backup": _aware(last).isoformat() if last else None}))
    return found


def _aware(moment: datetime) -> datetime:
    # The backups table's timestamps come back naive from SQLite; they were UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- from outside the catalog -----------------------------------------------------------------------

def store_fill(location: str, threshold_percent: float) -> list[Condition]:
    """A local store's filesystem; a remote store (sftp) has no filesystem Cairn can measure."""
    path = Path(location)
    if not path.is_dir():
        return []
    usage = shutil.disk_usage(path)
    percent = 100.0 * usage.used / usage.total if usage.total else 0.0
    if percent <= threshold_percent:
        return []
    return [Condition(RuleKind.STORE_FILL, f"{RuleKind.STORE_FILL.value}:{location}",
                      f"the store's filesystem is {percent:.1f}% full (threshold {threshold_percent:g}%, "
                      f"{usage.free / 2**30:.1f} GiB free): prune backups, run GC or grow the filesystem",
                      "store", {"percent": round(percent, 2), "threshold_percent": threshold_percent,
                                "free_bytes": usage.free, "total_bytes": usage.total})]


def hosts_unreachable(hosts: HostService) -> Iterator[Condition]:
    for host in hosts.list():
        try:
            hosts.vms(host.name)
        except HostUnreachableError as e:
            yield Condition(RuleKind.HOST_UNREACHABLE, f"{RuleKind.HOST_UNREACHABLE.value}:{host.name}",
                            f"host {host.name} ({host.uri}) does not answer: {e}", f"host:{host.name}")


def certificate_expiry(certificate: Path, days: int, now: datetime) -> list[Condition]:
    if not certificate.is_file():
        return []
    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    # cryptography >= 42 says it aware; Debian 12's 38 only as naive UTC.
    expires = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=UTC)
    if expires - now > timedelta(days=days):
        return []
    expired = expires <= now
    what = "has expired" if expired else f"expires in {(expires - now).days} day(s)"
    return [Condition(RuleKind.CERTIFICATE_EXPIRY, f"{RuleKind.CERTIFICATE_EXPIRY.value}:{certificate}",
                      f"the TLS certificate {certificate} {what} ({expires:%Y-%m-%d %H:%M} UTC): "
                      "replace it (`cairn serve --cert/--key`, or remove the self-signed one to make a new one)",
                      "appliance", {"expires_at": expires.isoformat(), "certificate": str(certificate)},
                      Severity.ERROR if expired else None)]
