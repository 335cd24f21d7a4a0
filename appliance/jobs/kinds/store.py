"""The store's upkeep as jobs: verify, GC and upgrade on the store's resource, prune on the VM's.

Verify and GC change nothing a second run would not redo (GC re-marks), and an upgrade converts
the backups still in format 1, so one interrupted by a restart resumes; a prune removes backups
for good and has no undo.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from appliance.access.roles import Role
from appliance.backups.records import record_verification
from appliance.backups.retention import apply_retention
from dedup import (
    GcReport,
    PruneReport,
    RetentionPolicy,
    UpgradeReport,
    VerifyReport,
    collect_garbage,
    upgrade_store,
    verify_store,
)
from dedup.names import check_name

from ..params import GcParams, PruneParams, UpgradeParams, VerifyParams
from ..plan import JobKind, JobPlan, Step, StepContext
from ..resources import store_resource, vm_resource
from .common import dumped

if TYPE_CHECKING:
    from appliance.context import Appliance


def store_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def may_prune(params: PruneParams) -> None:
        """A VM name the store takes, and at least one keep rule (none would remove every backup)."""
        check_name("vm name", params.vm)
        RetentionPolicy(**params.rules())

    def may_upgrade(params: UpgradeParams) -> None:
        """Sizes the format-2 store takes (StoreConfigError says which), when they apply: to a format-1 store."""
        if app.store.config.layout == 1:
            app.store.config.upgraded(params.block_size, params.pack_size)

    return {
        "store.verify": JobKind(VerifyParams, lambda params: verify_plan(app, params)),
        "store.gc": JobKind(GcParams, lambda params: gc_plan(app, params)),
        "store.prune": JobKind(PruneParams, lambda params: prune_plan(app, params), may_prune),
        "store.upgrade": JobKind(UpgradeParams, lambda params: upgrade_plan(app, params), may_upgrade),
    }


def verify_plan(app: Appliance, params: VerifyParams) -> JobPlan:
    """Checking chunks changes nothing in the store: after a restart it simply runs again."""

    async def verify(ctx: StepContext) -> None:
        report = await asyncio.to_thread(verify_store, app.store, params.sample_percent,
                                         progress=lambda done, total: ctx.progress(done / total if total else 1.0))
        damage = report.damaged_backups()
        with app.catalog.begin() as session:
            record_verification(session, damage, list(report.backups) if report.sample_percent == 100 else None)
        ctx.result.update(dumped(VerifyReport, report), ok=report.ok, damaged_backups=damage)
        if damage:
            app.jobs.events.emit("verify.damage", f"verify found damage in {len(damage)} backup(s)",
                                 severity="error", resource=store_resource(app), job_id=ctx.job_id,
                                 data={"damaged_backups": damage})

    return JobPlan(store_resource(app), [Step("verify", verify)], after_interruption="resume", needs=Role.ADMIN)


def gc_plan(app: Appliance, params: GcParams) -> JobPlan:
    """GC is safe to run again from the start (it re-marks), so an interrupted one resumes."""

    async def gc(ctx: StepContext) -> None:
        report = await asyncio.to_thread(
            collect_garbage, app.store, grace=timedelta(seconds=params.grace_seconds), dry_run=params.dry_run,
            repack_threshold=params.repack_percent / 100,
            progress=lambda phase, done, total: ctx.progress((0.0 if phase == "mark" else 0.5)
                                                             + 0.5 * (done / total if total else 1.0)))
        ctx.result.update(dumped(GcReport, report))

    return JobPlan(store_resource(app), [Step("gc", gc)], after_interruption="resume", needs=Role.ADMIN)


def upgrade_plan(app: Appliance, params: UpgradeParams) -> JobPlan:
    """Each backup is converted whole or not at all and chunks/ goes last, so an interrupted
    upgrade resumes with the backups still in format 1."""

    async def upgrade(ctx: StepContext) -> None:
        report = await asyncio.to_thread(upgrade_store, app.store, params.block_size, params.pack_size,
                                         progress=lambda done, total: ctx.progress(done / total if total else 1.0))
        ctx.result.update(dumped(UpgradeReport, report))

    return JobPlan(store_resource(app), [Step("upgrade", upgrade)], after_interruption="resume", needs=Role.ADMIN)


def prune_plan(app: Appliance, params: PruneParams) -> JobPlan:
    """On the VM's resource: never beside its backup, whose retention step prunes the same way."""

    async def prune_backups(ctx: StepContext) -> None:
        report = await asyncio.to_thread(apply_retention, app.store, app.catalog, params.vm, params,
                                         params.dry_run)
        ctx.result.update(dumped(PruneReport, report), removed=list(report.removed))

    return JobPlan(vm_resource(params.vm), [Step("prune", prune_backups)], needs=Role.ADMIN)
