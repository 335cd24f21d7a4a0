"""Retention rules as the API and policies take them, applied with dedup's prune to the
backups the appliance's catalog knows."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dedup import PruneReport, RetentionPolicy, Store, prune

from .protection import record_protection
from .records import BackupRecord, BackupStatus, record_pruned


class RetentionCounts(BaseModel):
    """How many backups to keep per VM; each rule keeps the newest backup of each of its last N periods."""
    model_config = ConfigDict(extra="forbid")
    keep_last: int = Field(0, strict=True, ge=0)
    keep_hourly: int = Field(0, strict=True, ge=0)
    keep_daily: int = Field(0, strict=True, ge=0)
    keep_weekly: int = Field(0, strict=True, ge=0)
    keep_monthly: int = Field(0, strict=True, ge=0)
    keep_yearly: int = Field(0, strict=True, ge=0)


class RetentionRules(RetentionCounts):
    """Retention that keeps something (a policy's rules)."""

    @model_validator(mode="after")
    def _keeps_something(self) -> RetentionRules:
        if not any(self.model_dump().values()):
            raise ValueError("no keep rule given: that would remove every backup (leave retention out to keep all)")
        return self


def apply_retention(store: Store, catalog: sessionmaker[Session], vm: str, rules: RetentionCounts,
                    dry_run: bool = False) -> PruneReport:
    """Prune the VM's backups by the rules; pruned backups stop being "ok" in the catalog too,
    and the catalog learns which of them the store marks protected (even in a dry run: that is
    what the store says, not a change).

    Only the backups this appliance made count and go: those its catalog calls ok, newest by the
    order it began them in (a clock set back meanwhile does not make the last one look old). A
    store shared with another appliance keeps that one's backups of a VM of the same name."""
    with catalog() as session:
        ours = {backup_id: sequence for backup_id, sequence in session.execute(
            select(BackupRecord.id, BackupRecord.sequence).where(BackupRecord.vm_name == vm,
                                                                 BackupRecord.status == BackupStatus.OK))}
    policy = RetentionPolicy(**rules.model_dump(include=set(RetentionCounts.model_fields)))
    report = prune(store, vm, policy, dry_run=dry_run, among=ours)
    with catalog.begin() as session:
        record_protection(session, report)
        if not dry_run:
            record_pruned(session, list(report.removed))
    return report
