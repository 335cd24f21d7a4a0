"""The store's maintenance API under /api/v1/store: stats, verify, gc, prune, sync, upgrade, retention locks.

Stats answer at once. Verify, GC, prune, sync and upgrade are jobs (on the store, or for a prune on the VM
whose backups it removes): they answer 202 with the job, whose result is the report, and a dry
run is a job like any other. /store/verify-jobs and /store/gc-jobs are the same as /store/verify
and /store/gc. An encrypted store opens with the passphrase the appliance was started with
($CAIRN_STORE_PASSPHRASE); without it, or with a wrong one, store calls answer 423 or 403 and
say why.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from appliance.access.visibility import visibility
from appliance.errors import NotFoundError
from appliance.jobs.params import GcParams, PruneParams, SyncParams, UpgradeParams, VerifyParams
from dedup import StoreError, StoreStats, lock_backup, store_stats

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep
from .jobs import SUBMIT_ERRORS, JobOut, submit_job


class LockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    until: AwareDatetime = Field(description="the date before which the backup cannot be deleted (UTC offset required)")


class LockOut(BaseModel):
    backup_id: str
    locked_until: datetime


router = APIRouter(prefix="/api/v1/store", tags=["store"])


@router.get("/stats", response_model=StoreStats, responses=raises(StoreError))
def stats(appliance: ApplianceDep, caller: Caller) -> StoreStats:
    """Totals of the whole store; per backup, only those of the VMs the caller sees."""
    shown = visibility(appliance).seen(caller)
    totals = store_stats(appliance.store)
    return replace(totals, per_backup=tuple(u for u in totals.per_backup if shown.vm(u.vm)))


@router.post("/verify", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def verify(appliance: ApplianceDep, caller: Caller, body: VerifyParams | None = None) -> JobOut:
    return submit_job(appliance, caller, "store.verify", body or VerifyParams())


@router.post("/gc", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def gc(appliance: ApplianceDep, caller: Caller, body: GcParams | None = None) -> JobOut:
    return submit_job(appliance, caller, "store.gc", body or GcParams())


@router.post("/prune", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def prune_backups(appliance: ApplianceDep, caller: Caller, body: PruneParams) -> JobOut:
    return submit_job(appliance, caller, "store.prune", body)


@router.post("/upgrade", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def upgrade(appliance: ApplianceDep, caller: Caller, body: UpgradeParams | None = None) -> JobOut:
    """Move a format-1 store to format 2 in place, keeping every backup; resumes after an interruption."""
    return submit_job(appliance, caller, "store.upgrade", body or UpgradeParams())


@router.post("/sync", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def sync(appliance: ApplianceDep, caller: Caller, body: SyncParams) -> JobOut:
    """Copy backups to (target) or from (source) another store, sending only what it lacks."""
    return submit_job(appliance, caller, "store.sync", body)


@router.post("/backups/{backup_id}/lock", response_model=LockOut, responses=raises(NotFoundError, StoreError))
def lock(appliance: ApplianceDep, caller: Caller, backup_id: str, body: LockRequest) -> LockOut:
    """Lock a backup until a date: nobody can delete it before then, nor shorten the lock."""
    visibility(appliance).check_backup(caller, backup_id)
    return LockOut(backup_id=backup_id, locked_until=lock_backup(appliance.store, backup_id, body.until))
