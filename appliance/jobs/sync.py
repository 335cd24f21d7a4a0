"""The sync job: backups copied to (push) or from (pull) another store, sending only what it lacks.

One of source and target is usually this appliance's store: a target URL alone pushes to it, a
source URL alone pulls from it into the appliance's store. Either opens with the appliance's
store credentials ($CAIRN_STORE_PASSPHRASE for the source's key, the SSH key for sftp://, the
AWS_* variables for s3://). The job's resource is the target, so two syncs into one store queue.
An interrupted sync resumes: it sends only what the target still lacks (dedup/sync.py).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from appliance.settings import StoreAccess
from dedup import Store, SyncProgress, SyncReport, open_backend, open_replica, sync_store

from .plan import JobPlan, Step, StepContext

if TYPE_CHECKING:
    from appliance.context import Appliance


class SyncParams(BaseModel):
    """What to copy where (the body of POST /api/v1/store/sync-jobs)."""
    model_config = ConfigDict(extra="forbid")
    target: str | None = Field(None, description="the store to copy into (push); default: this appliance's")
    source: str | None = Field(None, description="the store to copy from (pull); default: this appliance's")
    vms: list[str] = Field([], description="copy the backups of these VMs only (default: all)")
    bandwidth: int | None = Field(None, ge=1, description="bytes per second at most (default: no limit)")

    @model_validator(mode="after")
    def _names_another_store(self) -> SyncParams:
        if self.target is None and self.source is None:
            raise ValueError("a sync needs a target (push) or a source (pull) other than this appliance's store")
        if self.target is not None and self.target == self.source:
            raise ValueError("source and target are the same store")
        return self


def run_sync(access: StoreAccess, own: Store | None, params: SyncParams,
             progress: SyncProgress | None = None) -> SyncReport:
    """Open both stores (access: how to reach this appliance's, own: it if already open), sync, close
    what was opened here."""
    opened: list[Store] = []
    try:
        if params.source is not None:
            source = _access(access, params.source).open()
            opened.append(source)
        else:
            source = own if own is not None else access.open()
            if own is None:
                opened.append(source)
        target = open_replica(source, open_backend(params.target or access.location, access.ssh))
        opened.append(target)
        return sync_store(source, target, params.vms or None, params.bandwidth, progress)
    finally:
        for store in opened:
            store.close()


def _access(own: StoreAccess, location: str) -> StoreAccess:
    """Another store, reached with this appliance's credentials."""
    return StoreAccess(location, own.passphrase, own.key_file, own.ssh_identity_file, own.ssh_known_hosts)


def sync_plan(app: Appliance, params: SyncParams) -> JobPlan:
    target = params.target or app.settings.store_access().location

    async def sync(ctx: StepContext) -> None:
        def progress(sent: int, total: int, backup_id: str) -> None:
            ctx.progress(sent / total if total else 1.0)

        own = app.store if params.source is None else None
        report = await asyncio.to_thread(run_sync, app.settings.store_access(), own, params, progress)
        ctx.result.update(_dump(report))
        app.jobs.events.emit("store.synced", f"sync to {report.target}: {len(report.copied)} backup(s) copied, "
                             f"{report.bytes_sent} bytes sent", severity="info" if report.ok else "error",
                             resource=f"store:{target}", job_id=ctx.job_id, data=ctx.result)
        if report.skipped:
            raise RuntimeError(f"{len(report.skipped)} backup(s) could not be copied: {'; '.join(report.skipped)}")

    return JobPlan(f"store:{target}", [Step("sync", sync)], after_interruption="resume")


def _dump(report: SyncReport) -> dict[str, Any]:
    return TypeAdapter(SyncReport).dump_python(report, mode="json")
