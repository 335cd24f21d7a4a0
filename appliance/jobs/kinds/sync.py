"""Off-site copies as a job: backups copied to (push) or from (pull) another store, sending only
what it lacks (dedup/sync.py).

One of source and target is usually this appliance's store: a target alone pushes to it, a
source alone pulls from it into the appliance's store. Either opens with the appliance's store
credentials ($CAIRN_STORE_PASSPHRASE for the source's key, the SSH key for sftp://, the AWS_*
variables for s3://). The job's resource is the target, so two syncs into one store queue; it
is the admin's (it names stores and spends their credentials). An interrupted sync resumes:
it sends only what the target still lacks.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from appliance.access.roles import Role
from appliance.settings import StoreAccess
from dedup import Store, SyncProgress, SyncReport, open_backend, open_replica, sync_store

from ..params import SyncParams
from ..plan import JobKind, JobPlan, Step, StepContext
from .common import dumped

if TYPE_CHECKING:
    from appliance.context import Appliance


def sync_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    return {"store.sync": JobKind(SyncParams, lambda params: sync_plan(app, params))}


def sync_plan(app: Appliance, params: SyncParams) -> JobPlan:
    target = params.target or app.settings.store_access().location

    async def sync(ctx: StepContext) -> None:
        def progress(sent: int, total: int, backup_id: str) -> None:
            ctx.progress(sent / total if total else 1.0)

        own = app.store if params.source is None else None
        report = await asyncio.to_thread(run_sync, app.settings.store_access(), own, params, progress)
        ctx.result.update(dumped(SyncReport, report), ok=report.ok)
        app.jobs.events.emit("store.synced", f"sync to {report.target}: {len(report.copied)} backup(s) copied, "
                             f"{report.bytes_sent} bytes sent", severity="info" if report.ok else "error",
                             resource=f"store:{target}", job_id=ctx.job_id, data=dict(ctx.result))
        if report.skipped:
            raise RuntimeError(f"{len(report.skipped)} backup(s) could not be copied: {'; '.join(report.skipped)}")

    return JobPlan(f"store:{target}", [Step("sync", sync)], after_interruption="resume", needs=Role.ADMIN)


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
        return sync_store(source, target, params.backups_of or None, params.bandwidth, progress)
    finally:
        for store in opened:
            store.close()


def _access(own: StoreAccess, location: str) -> StoreAccess:
    """Another store, reached with this appliance's credentials."""
    return StoreAccess(location, own.passphrase, own.key_file, own.ssh_identity_file, own.ssh_known_hosts)
