"""Backups as jobs: a VM of this appliance, or of a registered host (libvirt, SSH).

Either way a job that does not complete leaves no backup behind, neither in the store nor in
the catalog, whoever submitted it: its steps' undo remove what the copy made, and the job's
error says why it failed.
"""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from appliance.access.roles import Role
from appliance.backups.options import BackupOptions
from appliance.backups.records import BackupRecord, BackupStatus
from appliance.backups.retention import RetentionRules, apply_retention
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError
from dedup import BackupNotFoundError, PruneReport, new_backup_id
from dedup.prune import delete_backup
from vmm.hosts import ACTIVE_STATES

from ..params import BackupParams, HostBackupParams
from ..plan import JobKind, JobPlan, Step, StepContext
from ..resources import vm_resource
from .common import disk_progress, dumped

if TYPE_CHECKING:
    from appliance.backups.service import BackupResult
    from appliance.context import Appliance


def backup_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def vm_exists(params: BackupParams) -> None:
        app.vms.spec(params.vm)

    return {
        "backup": JobKind(BackupParams, lambda params: backup_plan(app, params), vm_exists),
        "host.backup": JobKind(HostBackupParams, lambda params: host_backup_plan(app, params),
                               lambda params: host_vm_runs(app, params)),
    }


# -- a VM of this appliance ---------------------------------------------------------------------------

def backup_plan(app: Appliance, params: BackupParams) -> JobPlan:
    steps = backup_steps(app, params.vm, params.full, params.options())
    if params.retention is not None:
        steps.append(retention_step(app, params.vm, params.retention))
    # Retention removes backups for good, past the recycle bin: the admin's, like prune.
    return JobPlan(vm_resource(params.vm), steps, needs=Role.ADMIN if params.retention else Role.OPERATOR)


def backup_steps(app: Appliance, vm: str, full: bool, options: BackupOptions) -> list[Step]:
    """Claim a backup id in the catalog, then copy the disks into the store."""

    async def claim(ctx: StepContext) -> None:
        # The id is remembered before its record is made: a process killed in between leaves
        # an id whose undo finds nothing, never a record no undo knows of.
        backup_id = new_backup_id(utcnow())
        ctx.remember(backup_id=backup_id)
        app.backups.begin(app.vms.spec(vm), full=full, backup_id=backup_id)

    async def forget(ctx: StepContext) -> None:
        """A job that did not complete leaves no backup behind; it says itself why it failed."""
        if backup_id := ctx.memo.get("backup_id"):
            with app.catalog.begin() as s:
                s.execute(delete(BackupRecord).where(BackupRecord.id == backup_id))

    async def copy(ctx: StepContext) -> None:
        spec = app.vms.spec(vm)
        rec = app.backups.get(ctx.memo["backup_id"])
        if rec.status != BackupStatus.RUNNING:
            raise ConflictError(f"backup {rec.id} is {rec.status}, not running: it cannot be resumed")
        result = await app.backups.run(spec, rec, disk_progress(ctx, backup_of=vm), options)
        ctx.result.update(backup_result(result))

    async def discard(ctx: StepContext) -> None:
        """Remove the backup the copy committed. A copy that failed here removed its files itself;
        one whose process died leaves a directory without manifest (no backup, to the store),
        which the store's GC sweeps once the writer's lease is dead. QEMU's side (fleecing
        nodes, bitmaps) is repaired by the VM's next backup."""
        if backup_id := ctx.memo.get("backup_id"):
            remove_from_store(app, backup_id)

    return [Step("claim", claim, forget, weight=0.05), Step("copy", copy, discard, weight=1.0),
            announce_step(app, vm)]


def retention_step(app: Appliance, vm: str, rules: RetentionRules) -> Step:
    """Last, and without undo: a pruned backup cannot come back."""

    async def prune_backups(ctx: StepContext) -> None:
        report = await asyncio.to_thread(apply_retention, app.store, app.catalog, vm, rules)
        ctx.result["pruned"] = list(report.removed)
        if report.removed:
            app.jobs.events.emit("backup.pruned", f"retention removed {len(report.removed)} backup(s) of {vm}",
                                 resource=vm_resource(vm), job_id=ctx.job_id, data=dumped(PruneReport, report))

    return Step("retention", prune_backups, weight=0.05)


# -- a VM of a registered host ------------------------------------------------------------------------

def host_vm_runs(app: Appliance, params: HostBackupParams) -> None:
    """Other hosts' VMs are backed up while they run (libvirt's backup API, the agent's QEMU), and
    a libvirt domain's disk selection must leave a disk to read."""
    info = app.hosts.vm(params.host, params.vm)
    if info.state not in ACTIVE_STATES:
        raise ConflictError(f"VM {params.vm} on host {params.host} is {info.state}: VMs of other hosts are "
                            "backed up while they run; start it first")
    # A selection that leaves no disk is a mistake the request can be told of now, not a job.
    if app.hosts.get(params.host).kind == "libvirt":
        params.disk_selection().choose(f"domain {params.vm}", info.disks)


def host_backup_plan(app: Appliance, params: HostBackupParams) -> JobPlan:
    from appliance.backups.host import backup_vm_name

    name = backup_vm_name(params.host, params.vm)

    async def copy(ctx: StepContext) -> None:
        from appliance.backups.host_vm import back_up_host_vm

        # The host's backup service claims its backup id itself: what this job made is what
        # started after this instant (its resource keeps other jobs of the VM out).
        ctx.remember(since=utcnow().isoformat())
        result = await asyncio.to_thread(back_up_host_vm, app, params.host, params.vm, params.full,
                                         disk_progress(ctx, backup_of=name), params.disk_selection(),
                                         params.full_every)
        ctx.result.update(backup_result(result))

    async def discard(ctx: StepContext) -> None:
        if since := ctx.memo.get("since"):
            with app.catalog() as s:
                made = list(s.scalars(select(BackupRecord.id).where(
                    BackupRecord.vm_name == name, BackupRecord.started_at >= datetime.fromisoformat(since))))
            for backup_id in made:
                remove_from_store(app, backup_id)
                with app.catalog.begin() as s:
                    s.execute(delete(BackupRecord).where(BackupRecord.id == backup_id))

    return JobPlan(vm_resource(name), [Step("copy", copy, discard), announce_step(app, name)])


# -- shared ---------------------------------------------------------------------------------------------

def announce_step(app: Appliance, vm: str) -> Step:
    async def announce(ctx: StepContext) -> None:
        app.jobs.events.emit("backup.done", f"backup {ctx.result['backup_id']} of {vm} done ({ctx.result['kind']})",
                             resource=vm_resource(vm), job_id=ctx.job_id, data=dict(ctx.result))

    return Step("announce", announce, weight=0.01)


def backup_result(result: BackupResult) -> dict[str, Any]:
    """A backup job's result: the backup, what it read and stored, and how each disk was read
    (`since`: the checkpoint an incremental read from; None: read in full)."""
    m = result.manifest
    return {"backup_id": m.backup_id, "kind": m.kind, "notes": list(m.notes),
            "bytes_read": sum(d.stats.bytes_read for d in m.disks),
            "bytes_stored": sum(d.stats.bytes_stored for d in m.disks),
            "disks": [{"disk": p.disk, "since": p.since, "bytes_read": m.disk(p.disk).stats.bytes_read}
                      for p in result.points]}


def remove_from_store(app: Appliance, backup_id: str) -> None:
    """Delete a backup a job made from the store, if its manifest was committed."""
    try:
        manifest = app.store.get_backup(backup_id)
    except BackupNotFoundError:
        return
    if not delete_backup(app.store, manifest):
        raise ConflictError(f"backup {manifest.backup_id} is protected in the store: it was left in place")
