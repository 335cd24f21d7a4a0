"""The store's maintenance API under /api/v1/store: stats, verify, gc, prune, retention locks.

Each call runs to completion and answers with its report; for large stores, run verify and GC
as jobs (POST /api/v1/store/verify-jobs, /store/gc-jobs: progress, cancel, events). An
encrypted store opens with the passphrase the appliance was started with
($CAIRN_STORE_PASSPHRASE); without it, or with a wrong one, store calls
answer 423 or 403 and say why.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from appliance.backups.records import record_pruned, record_verification
from appliance.backups.retention import RetentionCounts
from appliance.context import Appliance
from appliance.jobs.kinds import GcParams, VerifyParams
from dedup import (
    GcReport,
    PruneReport,
    RetentionPolicy,
    StoreStats,
    VerifyReport,
    collect_garbage,
    lock_backup,
    prune,
    store_stats,
    verify_store,
)

from .app import ErrorOut


class PruneRequest(RetentionCounts):
    vm: str
    dry_run: bool = False


def store_router(appliance: Appliance) -> APIRouter:
    router = APIRouter(prefix="/api/v1/store", tags=["store"])
    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (403, 404, 409, 422, 423)}

    @router.get("/stats", response_model=StoreStats, responses=errors)
    def stats() -> StoreStats:
        return store_stats(appliance.store)

    @router.post("/verify", response_model=VerifyReport, responses=errors)
    def verify(body: VerifyParams | None = None) -> VerifyReport:
        report = verify_store(appliance.store, sample_percent=(body or VerifyParams()).sample_percent)
        with appliance.catalog.begin() as session:
            record_verification(session, report.damaged_backups(),
                                list(report.backups) if report.sample_percent == 100 else None)
        return report

    @router.post("/gc", response_model=GcReport, responses=errors)
    def gc(body: GcParams | None = None) -> GcReport:
        request = body or GcParams()
        return collect_garbage(appliance.store, grace=timedelta(seconds=request.grace_seconds), dry_run=request.dry_run)

    @router.post("/prune", response_model=PruneReport, responses=errors)
    def prune_backups(body: PruneRequest) -> PruneReport:
        rules = body.model_dump(exclude={"vm", "dry_run"})
        answer = prune(appliance.store, body.vm, RetentionPolicy(**rules), dry_run=body.dry_run)
        if not body.dry_run:
            with appliance.catalog.begin() as session:
                record_pruned(session, list(answer.removed))
        return answer

    @router.post("/backups/{backup_id}/lock", response_model=LockOut, responses=errors)
    def lock(backup_id: str, body: LockRequest) -> LockOut:
        """Lock a backup until a date: nobody can delete it before then, nor shorten the lock."""
        return LockOut(backup_id=backup_id, locked_until=lock_backup(appliance.store, backup_id, body.until))

    return router


class LockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    until: AwareDatetime = Field(description="the date before which the backup cannot be deleted (UTC offset required)")


class LockOut(BaseModel):
    backup_id: str
    locked_until: datetime
