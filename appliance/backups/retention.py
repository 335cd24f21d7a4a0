"""Retention rules as the API and policies take them, applied with dedup's prune."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session, sessionmaker

from dedup import PruneReport, RetentionPolicy, Store, prune

from .records import record_pruned


class RetentionCounts(BaseModel):
    """How many backups to keep per VM; each rule keeps the newest backup of each of its last N periods."""
    model_config = ConfigDict(extra="forbid")
    keep_last: int = Field(0, ge=0)
    keep_hourly: int = Field(0, ge=0)
    keep_daily: int = Field(0, ge=0)
    keep_weekly: int = Field(0, ge=0)
    keep_monthly: int = Field(0, ge=0)
    keep_yearly: int = Field(0, ge=0)


class RetentionRules(RetentionCounts):
    """Retention that keeps something (a policy's rules)."""

    @model_validator(mode="after")
    def _keeps_something(self) -> RetentionRules:
        if not any(self.model_dump().values()):
            raise ValueError("no keep rule given: that would remove every backup (leave retention out to keep all)")
        return self


def apply_retention(store: Store, catalog: sessionmaker[Session], vm: str, rules: RetentionRules) -> PruneReport:
    """Prune the VM's backups by the rules; pruned backups stop being "ok" in the catalog too."""
    report = prune(store, vm, RetentionPolicy(**rules.model_dump()))
    with catalog.begin() as session:
        record_pruned(session, list(report.removed))
    return report
