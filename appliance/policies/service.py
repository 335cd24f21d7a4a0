"""Backup, snapshot and sync policies: when (a cron expression, UTC), which VMs (name patterns, tags), how.

A policy is stored as its validated request; the scheduler turns it into jobs. VM tags,
which policies select by, live here too.
"""
from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from croniter import CroniterBadDateError, croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from appliance.access.seen import ALL, Seen
from appliance.backups.options import DEFAULT_FULL_EVERY
from appliance.backups.records import last_good_backup
from appliance.backups.retention import RetentionRules
from appliance.backups.selection import DiskSelection
from appliance.catalog.base import utcnow
from appliance.catalog.paging import run_query
from appliance.catalog.query import HasHeaders, ListQuery
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.params import SyncParams
from appliance.vms.records import VMRecord, VMTagRecord

from .records import PolicyRecord

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Clock = Callable[[], datetime]
_EPSILON = timedelta(microseconds=1)   # a run due exactly `now` is due


class ScheduledBase(BaseModel):
    """What every policy has: a name and a schedule."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME, max_length=63)
    enabled: bool = True
    schedule: str = Field(description="cron expression in UTC, e.g. '0 2 * * *' (02:00 every day)")
    run_missed: bool = Field(True, description="after downtime, run a missed schedule once (else skip it)")

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if not croniter.is_valid(value) or not (value.startswith("@") or len(value.split()) == 5):
            raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday, e.g. '0 2 * * *')")
        try:
            croniter(value, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
        except CroniterBadDateError as e:
            raise ValueError(f"{value!r} never fires (no such date)") from e
        return value


class PolicyBase(ScheduledBase):
    """A policy that acts on VMs, which it selects by name pattern and tag."""
    vms: list[str] = Field(default_factory=list, description="VM name patterns ('web*', 'db?'); any may match")
    tags: list[str] = Field(default_factory=list, description="VM tags; a VM with any of them matches")

    @model_validator(mode="after")
    def _selects_something(self) -> PolicyBase:
        if not self.vms and not self.tags:
            raise ValueError("a policy selects VMs by name pattern (vms: ['*'] for all) and/or tags")
        return self

    def selects(self, vm: str, vm_tags: set[str]) -> bool:
        by_name = not self.vms or any(fnmatch.fnmatchcase(vm, pattern) for pattern in self.vms)
        by_tag = not self.tags or bool(vm_tags & set(self.tags))
        return by_name and by_tag


class BackupPolicy(PolicyBase):
    kind: Literal["backup"] = "backup"
    full_every: int = Field(DEFAULT_FULL_EVERY, strict=True, ge=0, le=100_000,
                            description="read a disk in full after this many incrementals of it (0: always)")
    retention: RetentionRules | None = Field(None, description="prune each VM's backups after its backup")
    include: list[str] = Field([], description="read only the disks one of these selects: a name pattern or "
                                               "kind:<tag> (see the backup request)")
    exclude: list[str] = Field([], description="then leave out the disks one of these selects")
    max_per_host: int | None = Field(None, strict=True, ge=1, description="backups running at once on this host")
    max_per_store: int | None = Field(None, strict=True, ge=1, description="backups running at once into the store")

    @model_validator(mode="after")
    def _selection_is_valid(self) -> BackupPolicy:
        DiskSelection.of(self.include, self.exclude)
        return self


class SnapshotPolicy(PolicyBase):
    kind: Literal["snapshot"] = "snapshot"
    keep: int = Field(7, strict=True, ge=1, description="automatic snapshots of this policy kept per VM; older ones are merged")


class SyncPolicy(PolicyBase):
    """Off-site copies: the selected VMs' backups copied to another store (push) or from one (pull)."""
    kind: Literal["sync"] = "sync"
    target: str | None = Field(None, description="the store to copy into (push); default: this appliance's")
    source: str | None = Field(None, description="the store to copy from (pull); default: this appliance's")
    bandwidth: int | None = Field(None, strict=True, ge=1, description="bytes per second at most (default: no limit)")

    @model_validator(mode="after")
    def _names_another_store(self) -> SyncPolicy:
        SyncParams(target=self.target, source=self.source, backups_of=[], bandwidth=self.bandwidth)
        return self


class StorePolicy(ScheduledBase):
    """The store's upkeep on a schedule: one job a run, on the store, not on VMs."""

    def selects(self, vm: str, vm_tags: set[str]) -> bool:
        return False


class VerifyPolicy(StorePolicy):
    """Verify the store (all chunks, or a sample) on a schedule: damage found raises the verify alarm."""
    kind: Literal["verify"] = "verify"
    sample_percent: float = Field(strict=True, default=100.0, gt=0, le=100, description="share of the chunks read each run")


class GcPolicy(StorePolicy):
    """Collect the store's unreferenced chunks on a schedule (with the GC job's grace and repack defaults)."""
    kind: Literal["gc"] = "gc"


AnyPolicy = BackupPolicy | SnapshotPolicy | SyncPolicy | VerifyPolicy | GcPolicy
Policy = Annotated[AnyPolicy, Field(discriminator="kind")]
_POLICY: TypeAdapter[AnyPolicy] = TypeAdapter(Policy)


class PolicyOut(BaseModel):
    id: str
    created_at: datetime
    scheduled_until: datetime | None
    policy: Policy


def policy_of(rec: PolicyRecord) -> AnyPolicy:
    return _POLICY.validate_python({**rec.spec, "name": rec.name, "kind": rec.kind, "enabled": rec.enabled})


def policy_out(rec: PolicyRecord) -> PolicyOut:
    return PolicyOut(id=rec.id, created_at=rec.created_at, scheduled_until=rec.scheduled_until,
                     policy=policy_of(rec))


def next_runs(schedule: str, after: datetime, count: int) -> list[datetime]:
    it = croniter(schedule, after)
    return [it.get_next(datetime) for _ in range(count)]


def latest_due(schedule: str, after: datetime, now: datetime) -> tuple[datetime | None, int]:
    """The latest scheduled time in (after, now] and how many fell in that span (capped at 100)."""
    it = croniter(schedule, now + _EPSILON)
    latest = it.get_prev(datetime)
    if latest <= after:
        return None, 0
    count = 1
    while count < 100 and it.get_prev(datetime) > after:
        count += 1
    return latest, count


class PolicyService:
    def __init__(self, catalog: sessionmaker[Session], clock: Clock = utcnow):
        self.catalog = catalog
        self.clock = clock

    def create(self, policy: AnyPolicy) -> PolicyRecord:
        rec = PolicyRecord(id=uuid.uuid4().hex[:16], created_at=self.clock(), **_columns(policy))
        with self._saving(policy.name) as s:
            s.add(rec)
        return rec

    def replace(self, ref: str, policy: AnyPolicy) -> PolicyRecord:
        with self._saving(policy.name) as s:
            rec = self._find(s, ref)
            for key, value in _columns(policy).items():
                setattr(rec, key, value)
        return rec

    def get(self, ref: str) -> PolicyRecord:
        with self.catalog() as s:
            return self._find(s, ref)

    def page(self, query: ListQuery, response: HasHeaders | None = None) -> list[PolicyRecord]:
        with self.catalog() as s:
            return run_query(query, s, PolicyRecord, response=response)

    def delete(self, ref: str) -> PolicyRecord:
        with self.catalog.begin() as s:
            rec = self._find(s, ref)
            s.delete(rec)
        return rec

    def restore(self, rec_data: dict[str, Any]) -> PolicyRecord:
        """Put back a policy from the recycle bin (same id, same schedule mark)."""
        rec = PolicyRecord(**{**rec_data, "created_at": datetime.fromisoformat(rec_data["created_at"]),
                              "scheduled_until": datetime.fromisoformat(rec_data["scheduled_until"])
                              if rec_data.get("scheduled_until") else None})
        with self._saving(rec.name) as s:
            s.add(rec)
        return rec

    def enabled(self) -> list[PolicyRecord]:
        with self.catalog() as s:
            return list(s.scalars(select(PolicyRecord).where(PolicyRecord.enabled.is_(True))
                                  .order_by(PolicyRecord.name)))

    def selected_vms(self, policy: AnyPolicy) -> list[str]:
        with self.catalog() as s:
            names = list(s.scalars(select(VMRecord.name).order_by(VMRecord.name)))
            tags = _tags_by_vm(s.execute(select(VMTagRecord.vm_name, VMTagRecord.tag)))
        return [vm for vm in names if policy.selects(vm, tags.get(vm, set()))]

    def preview(self, ref: str, count: int, seen: Seen = ALL) -> dict[str, Any]:
        """The next runs and, for each VM it selects today (of those `seen` shows), what the next
        run would do."""
        rec = self.get(ref)
        policy = policy_of(rec)
        now = self.clock()
        vms = [vm for vm in self.selected_vms(policy) if seen.vm(vm)]
        plan: dict[str, Any]
        if isinstance(policy, BackupPolicy):
            with self.catalog() as s:
                plan = {vm: "incremental" if last_good_backup(s, vm) else "full" for vm in vms}
        else:
            plan = {vm: policy.kind for vm in vms}
        return {"policy": rec.name, "enabled": rec.enabled, "now": now,
                "next_runs": next_runs(policy.schedule, now, count) if rec.enabled else [], "vms": plan}

    # -- tags -------------------------------------------------------------------------------------

    def set_tags(self, vm: str, tags: Iterable[str]) -> list[str]:
        with self.catalog.begin() as s:
            if s.get(VMRecord, vm) is None:
                raise NotFoundError(f"no VM named {vm}")
            s.execute(delete(VMTagRecord).where(VMTagRecord.vm_name == vm))
            s.add_all(VMTagRecord(vm_name=vm, tag=tag) for tag in sorted(set(tags)))
        return self.tags(vm)

    def tags(self, vm: str) -> list[str]:
        with self.catalog() as s:
            if s.get(VMRecord, vm) is None:
                raise NotFoundError(f"no VM named {vm}")
            return list(s.scalars(select(VMTagRecord.tag).where(VMTagRecord.vm_name == vm).order_by(VMTagRecord.tag)))

    @contextmanager
    def _saving(self, name: str) -> Iterator[Session]:
        """A transaction; the unique name taken by another policy is a conflict, said as such."""
        try:
            with self.catalog.begin() as s:
                yield s
        except IntegrityError as e:
            raise ConflictError(f"a policy named {name} already exists") from e

    @staticmethod
    def _find(s: Session, ref: str) -> PolicyRecord:
        rec = s.get(PolicyRecord, ref) or s.scalars(select(PolicyRecord).where(PolicyRecord.name == ref)).first()
        if rec is None:
            raise NotFoundError(f"no policy {ref}")
        return rec


def _columns(policy: AnyPolicy) -> dict[str, Any]:
    return {"name": policy.name, "kind": policy.kind, "enabled": policy.enabled,
            "spec": policy.model_dump(mode="json", exclude={"name", "kind", "enabled"})}


def _tags_by_vm(rows: Iterable[Any]) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = {}
    for vm, tag in rows:
        tags.setdefault(vm, set()).add(tag)
    return tags
