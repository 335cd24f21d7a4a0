"""The store's maintenance API under /api/v1/store: stats, verify, gc, prune.

Each call runs to completion and answers with its report (verify and GC take
seconds to minutes on large stores; the job engine will make them jobs).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dedup import (DEFAULT_GRACE, BackupNotFoundError, GcReport, PruneReport, RetentionPolicy, RetentionRuleError,
                   StoreBusyError, StoreStats, VerifyReport, collect_garbage, prune, store_stats, verify_store)

from .api import ErrorOut, error_body
from .catalog import record_pruned, record_verification
from .context import Appliance

T = TypeVar("T")
# Store errors that are the caller's doing or a conflict, not a server fault.
_STATUS = {StoreBusyError: 409, RetentionRuleError: 422, BackupNotFoundError: 404}


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_percent: float = Field(100.0, gt=0, le=100)


class GcRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_seconds: float = Field(DEFAULT_GRACE.total_seconds(), ge=0)
    dry_run: bool = False


class PruneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm: str
    keep_last: int = Field(0, ge=0)
    keep_hourly: int = Field(0, ge=0)
    keep_daily: int = Field(0, ge=0)
    keep_weekly: int = Field(0, ge=0)
    keep_monthly: int = Field(0, ge=0)
    keep_yearly: int = Field(0, ge=0)
    dry_run: bool = False


def _answer(work: Callable[[], T]) -> T | JSONResponse:
    try:
        return work()
    except tuple(_STATUS) as e:
        return error_body(_STATUS[type(e)], type(e).__name__, str(e))


def store_router(appliance: Appliance) -> APIRouter:
    router = APIRouter(prefix="/api/v1/store", tags=["store"])
    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (404, 409, 422)}

    @router.get("/stats", response_model=StoreStats)
    def stats() -> StoreStats:
        return store_stats(appliance.store)

    @router.post("/verify", response_model=VerifyReport, responses=errors)
    def verify(body: VerifyRequest | None = None) -> VerifyReport:
        report = verify_store(appliance.store, sample_percent=(body or VerifyRequest()).sample_percent)
        with appliance.catalog.begin() as session:
            record_verification(session, report.damaged_backups(),
                                list(report.backups) if report.sample_percent == 100 else None)
        return report

    @router.post("/gc", response_model=GcReport, responses=errors)
    def gc(body: GcRequest | None = None) -> GcReport | JSONResponse:
        request = body or GcRequest()
        return _answer(lambda: collect_garbage(appliance.store, grace=timedelta(seconds=request.grace_seconds),
                                               dry_run=request.dry_run))

    @router.post("/prune", response_model=PruneReport, responses=errors)
    def prune_backups(body: PruneRequest) -> PruneReport | JSONResponse:
        rules = body.model_dump(exclude={"vm", "dry_run"})
        answer = _answer(lambda: prune(appliance.store, body.vm, RetentionPolicy(**rules), dry_run=body.dry_run))
        if isinstance(answer, PruneReport) and not body.dry_run:
            with appliance.catalog.begin() as session:
                record_pruned(session, list(answer.removed))
        return answer

    return router
