"""The appliance's jobs, as steps with their undo: backup, snapshot, store verify and GC.

Parameters are pydantic models (the API shows their errors as they are); plans are built
when a job is submitted, so a VM that does not exist is refused before anything is queued.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from sqlalchemy import delete

from appliance.backups.options import DEFAULT_FULL_EVERY, BackupOptions
from appliance.backups.records import BackupRecord, record_verification
from appliance.backups.retention import RetentionRules, apply_retention
from appliance.backups.selection import DiskSelection
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError
from appliance.metrics.live import RUNNING_BACKUPS
from dedup import (
    DEFAULT_GRACE,
    BackupNotFoundError,
    GcReport,
    PruneReport,
    VerifyReport,
    collect_garbage,
    verify_store,
)
from dedup.prune import delete_backup

from .plan import JobPlan, PlanFactory, Step, StepContext
from .sync import SyncParams, sync_plan

if TYPE_CHECKING:
    from appliance.context import Appliance

HOST = "host:local"   # one host for now; the key concurrency limits per host count against


def vm_resource(vm: str) -> str:
    return f"vm:{vm}"


def store_resource(app: Appliance) -> str:
    return f"store:{app.store.location}"


class BackupRequest(BaseModel):
    """How to back up a VM (the body of POST /vms/{name}/backups)."""
    model_config = ConfigDict(extra="forbid")
    full: bool = Field(False, description="read every disk in full")
    full_every: int = Field(DEFAULT_FULL_EVERY, ge=0, le=100_000,
                            description="read a disk in full after this many incrementals of it (0: always)")
    transport: Literal["pull", "push"] = Field("pull", description="pull: Cairn reads an NBD export of the point "
                                               "in time; push: QEMU writes it into a target Cairn serves")
    include: list[str] = Field([], description="read only the disks one of these selects: a name pattern (vdb, "
                                               "vd[b-d]) or kind:<tag> (qcow2, raw, file, block, network, readonly...)")
    exclude: list[str] = Field([], description="then leave out the disks one of these selects (same syntax)")

    @model_validator(mode="after")
    def _selection_is_valid(self) -> BackupRequest:
        self.disk_selection()
        return self

    def disk_selection(self) -> DiskSelection:
        return DiskSelection.of(self.include, self.exclude)

    def options(self) -> BackupOptions:
        return BackupOptions(full_every=self.full_every, transport=self.transport, disks=self.disk_selection())


class BackupParams(BackupRequest):
    vm: str
    retention: RetentionRules | None = None   # prune the VM's backups afterwards


class SnapshotParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm: str
    prefix: str = Field("auto", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63)
    keep: int = Field(0, ge=0, description="automatic snapshots named prefix-* to keep (0: all)")


class VerifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_percent: float = Field(100.0, gt=0, le=100)


class GcParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_seconds: float = Field(DEFAULT_GRACE.total_seconds(), ge=0, le=10 * 365 * 86400)
    dry_run: bool = False


def standard_kinds(app: Appliance) -> dict[str, PlanFactory]:
    return {
        "backup": lambda params: backup_plan(app, BackupParams.model_validate(params)),
        "snapshot": lambda params: snapshot_plan(app, SnapshotParams.model_validate(params)),
        "store.verify": lambda params: verify_plan(app, VerifyParams.model_validate(params)),
        "store.gc": lambda params: gc_plan(app, GcParams.model_validate(params)),
        "store.sync": lambda params: sync_plan(app, SyncParams.model_validate(params)),
    }


# -- backup -----------------------------------------------------------------------------------------

def backup_plan(app: Appliance, params: BackupParams) -> JobPlan:
    app.vms.spec(params.vm)   # refuses an unknown VM now
    steps = backup_steps(app, params.vm, params.full, params.options())
    if params.retention is not None:
        steps.append(retention_step(app, params.vm, params.retention))
    return JobPlan(vm_resource(params.vm), steps)


def backup_steps(app: Appliance, vm: str, full: bool, options: BackupOptions) -> list[Step]:
    """Claim a backup id in the catalog, then copy the disks into the store."""

    async def claim(ctx: StepContext) -> None:
        rec = app.backups.begin(app.vms.spec(vm), full=full)
        ctx.remember(backup_id=rec.id)

    async def forget(ctx: StepContext) -> None:
        """A job that did not complete leaves no backup behind; it says itself why it failed."""
        if backup_id := ctx.memo.get("backup_id"):
            with app.catalog.begin() as s:
                s.execute(delete(BackupRecord).where(BackupRecord.id == backup_id))

    async def copy(ctx: StepContext) -> None:
        spec = app.vms.spec(vm)
        rec = app.backups.get(ctx.memo["backup_id"])
        if rec.status != "running":
            raise ConflictError(f"backup {rec.id} is {rec.status}, not running: it cannot be resumed")
        disks: dict[str, tuple[int, int]] = {}

        def progress(disk: str, done: int, total: int) -> None:
            disks[disk] = (done, total)
            done_all, total_all = sum(d for d, _ in disks.values()), sum(t for _, t in disks.values())
            RUNNING_BACKUPS.report(ctx.job_id, vm, done_all, total_all)   # /metrics, while it runs
            ctx.progress(done_all / max(total_all, 1))

        result = await app.backups.run(spec, rec, progress, options)
        m = result.manifest
        ctx.result.update(backup_id=m.backup_id, kind=m.kind, notes=list(m.notes),
                          bytes_read=sum(d.stats.bytes_read for d in m.disks),
                          bytes_stored=sum(d.stats.bytes_stored for d in m.disks))

    async def discard(ctx: StepContext) -> None:
        """Remove the backup the copy committed. A copy that failed here removed its files itself;
        one whose process died leaves a directory without manifest (no backup, to the store),
        which the store's GC sweeps once the writer's lease is dead. QEMU's side (fleecing
        nodes, bitmaps) is repaired by the VM's next backup."""
        backup_id = ctx.memo.get("backup_id")
        if backup_id is None:
            return
        try:
            manifest = app.store.get_backup(backup_id)
        except BackupNotFoundError:
            return
        if not delete_backup(app.store, manifest):
            raise ConflictError(f"backup {manifest.backup_id} is protected in the store: it was left in place")

    async def announce(ctx: StepContext) -> None:
        app.jobs.events.emit("backup.done", f"backup {ctx.result['backup_id']} of {vm} done ({ctx.result['kind']})",
                             resource=vm_resource(vm), job_id=ctx.job_id, data=dict(ctx.result))

    return [Step("claim", claim, forget, weight=0.05), Step("copy", copy, discard, weight=1.0),
            Step("announce", announce, weight=0.01)]


def retention_step(app: Appliance, vm: str, rules: RetentionRules) -> Step:
    """Last, and without undo: a pruned backup cannot come back."""

    async def prune_backups(ctx: StepContext) -> None:
        report = await asyncio.to_thread(apply_retention, app.store, app.catalog, vm, rules)
        ctx.result["pruned"] = list(report.removed)
        if report.removed:
            app.jobs.events.emit("backup.pruned", f"retention removed {len(report.removed)} backup(s) of {vm}",
                                 resource=vm_resource(vm), job_id=ctx.job_id, data=_dump(PruneReport, report))

    return Step("retention", prune_backups, weight=0.05)


# -- snapshots --------------------------------------------------------------------------------------

def snapshot_plan(app: Appliance, params: SnapshotParams) -> JobPlan:
    app.vms.spec(params.vm)

    async def take(ctx: StepContext) -> None:
        name = f"{params.prefix}-{utcnow():%Y%m%dT%H%M%SZ}-{ctx.job_id[:4]}"
        ctx.remember(snapshot_name=name)
        snap = await app.snapshots.create(params.vm, name, automatic=True)
        ctx.result.update(snapshot_id=snap.id, snapshot_name=snap.name)

    async def drop(ctx: StepContext) -> None:
        name = ctx.memo.get("snapshot_name")
        if name and any(s.name == name for s in app.snapshots.tree(params.vm).snapshots.values()):
            await app.snapshots.delete(params.vm, name)

    async def rotate(ctx: StepContext) -> None:
        """Delete the oldest automatic snapshots of this prefix beyond `keep` (no undo: it runs last)."""
        if not params.keep:
            return
        ours = sorted((s for s in app.snapshots.tree(params.vm).snapshots.values()
                       if s.automatic and s.name.startswith(f"{params.prefix}-")), key=lambda s: s.created)
        rotated = []
        for snap in ours[:-params.keep]:
            await app.snapshots.delete(params.vm, snap.id)
            rotated.append(snap.name)
        ctx.result["rotated"] = rotated

    return JobPlan(vm_resource(params.vm), [Step("snapshot", take, drop), Step("rotate", rotate, weight=0.5)])


# -- store maintenance ------------------------------------------------------------------------------

def verify_plan(app: Appliance, params: VerifyParams) -> JobPlan:
    """Checking chunks changes nothing in the store: after a restart it simply runs again."""

    async def verify(ctx: StepContext) -> None:
        report = await asyncio.to_thread(verify_store, app.store, params.sample_percent,
                                         progress=lambda done, total: ctx.progress(done / total if total else 1.0))
        damage = report.damaged_backups()
        with app.catalog.begin() as session:
            record_verification(session, damage, list(report.backups) if report.sample_percent == 100 else None)
        ctx.result.update(_dump(VerifyReport, report))
        if damage:
            app.jobs.events.emit("verify.damage", f"verify found damage in {len(damage)} backup(s)",
                                 severity="error", resource=store_resource(app), job_id=ctx.job_id,
                                 data={"damaged_backups": damage})

    return JobPlan(store_resource(app), [Step("verify", verify)], after_interruption="resume")


def gc_plan(app: Appliance, params: GcParams) -> JobPlan:
    """GC is safe to run again from the start (it re-marks), so an interrupted one resumes."""

    async def gc(ctx: StepContext) -> None:
        report = await asyncio.to_thread(
            collect_garbage, app.store, grace=timedelta(seconds=params.grace_seconds), dry_run=params.dry_run,
            progress=lambda phase, done, total: ctx.progress((0.0 if phase == "mark" else 0.5)
                                                             + 0.5 * (done / total if total else 1.0)))
        ctx.result.update(_dump(GcReport, report))

    return JobPlan(store_resource(app), [Step("gc", gc)], after_interruption="resume")


def _dump(kind: type, report: Any) -> dict[str, Any]:
    return TypeAdapter(kind).dump_python(report, mode="json")
