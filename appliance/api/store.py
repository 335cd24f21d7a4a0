"""The store's maintenance API under /api/v1/store: stats, verify, gc, prune.

Stats answer at once. Verify, GC and prune are jobs (on the store, or for a prune on the VM
whose backups it removes): they answer 202 with the job, whose result is the report, and a dry
run is a job like any other. /store/verify-jobs and /store/gc-jobs are the same as /store/verify
and /store/gc. An encrypted store opens with the passphrase the appliance was started with
($CAIRN_STORE_PASSPHRASE); without it, or with a wrong one, store calls answer 423 or 403 and
say why.
"""
from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter

from appliance.access.visibility import visibility
from appliance.context import Appliance
from appliance.jobs.params import GcParams, PruneParams, VerifyParams
from dedup import StoreError, StoreStats, store_stats

from .answers import raises
from .auth import Caller
from .jobs import SUBMIT_ERRORS, JobOut, submit_job


def store_router(appliance: Appliance) -> APIRouter:
    router = APIRouter(prefix="/api/v1/store", tags=["store"])
    seen = visibility(appliance)

    @router.get("/stats", response_model=StoreStats, responses=raises(StoreError))
    def stats(caller: Caller) -> StoreStats:
        """Totals of the whole store; per backup, only those of the VMs the caller sees."""
        shown = seen.seen(caller)
        totals = store_stats(appliance.store)
        return replace(totals, per_backup=tuple(u for u in totals.per_backup if shown.vm(u.vm)))

    @router.post("/verify", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
    def verify(caller: Caller, body: VerifyParams | None = None) -> JobOut:
        return submit_job(appliance, caller, "store.verify", body or VerifyParams())

    @router.post("/gc", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
    def gc(caller: Caller, body: GcParams | None = None) -> JobOut:
        return submit_job(appliance, caller, "store.gc", body or GcParams())

    @router.post("/prune", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
    def prune_backups(caller: Caller, body: PruneParams) -> JobOut:
        return submit_job(appliance, caller, "store.prune", body)

    return router
