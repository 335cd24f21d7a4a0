"""Snapshots as jobs: take, revert and delete one, and a policy's automatic snapshot with its rotation.

They run on the VM's resource, so never beside a backup or another snapshot operation of the
VM. Each operation is itself crash-safe (an intent record, chain/intent.py): one whose process
died is finished or rolled back by the VM's next snapshot operation, so these steps need no
undo of their own, except the policy's snapshot, which a failed rotation takes back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.catalog.base import utcnow

from ..params import (
    OnVM,
    SnapshotCreateParams,
    SnapshotDeleteParams,
    SnapshotParams,
    SnapshotRevertParams,
)
from ..plan import JobKind, JobPlan, Step, StepContext
from ..resources import vm_resource

if TYPE_CHECKING:
    from appliance.context import Appliance


def snapshot_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def vm_exists(params: OnVM) -> None:
        app.vms.spec(params.vm)

    def may_create(params: SnapshotCreateParams) -> None:
        app.snapshots.check_create(params.vm, params.name, params.automatic, params.memory)

    def may_revert(params: SnapshotRevertParams) -> None:
        app.snapshots.check_revert(params.vm, params.snapshot, params.memory)

    def may_delete(params: SnapshotDeleteParams) -> None:
        app.snapshots.check_delete(params.vm, params.snapshot, params.via)

    return {
        "snapshot": JobKind(SnapshotParams, lambda params: policy_snapshot_plan(app, params), vm_exists),
        "snapshot.create": JobKind(SnapshotCreateParams, lambda params: create_plan(app, params), may_create),
        "snapshot.revert": JobKind(SnapshotRevertParams, lambda params: revert_plan(app, params), may_revert),
        "snapshot.delete": JobKind(SnapshotDeleteParams, lambda params: delete_plan(app, params), may_delete),
    }


def create_plan(app: Appliance, params: SnapshotCreateParams) -> JobPlan:
    async def take(ctx: StepContext) -> None:
        snap = await app.snapshots.create(params.vm, params.name, params.automatic, params.memory)
        ctx.result.update(snapshot_out(snap))

    return JobPlan(vm_resource(params.vm), [Step("snapshot", take)])


def revert_plan(app: Appliance, params: SnapshotRevertParams) -> JobPlan:
    async def revert(ctx: StepContext) -> None:
        snap = await app.snapshots.revert(params.vm, params.snapshot, params.memory)
        resumed = snap.memory is not None and params.memory is not False
        ctx.result.update(snapshot_out(snap), resumed=resumed)

    return JobPlan(vm_resource(params.vm), [Step("revert", revert)])


def delete_plan(app: Appliance, params: SnapshotDeleteParams) -> JobPlan:
    async def merge(ctx: StepContext) -> None:
        merges = await app.snapshots.delete(params.vm, params.snapshot, params.via, params.rate_limit)
        ctx.result["merges"] = [{"disk": m.disk, "via": m.kind, "moved_bytes": m.moved_bytes} for m in merges]

    return JobPlan(vm_resource(params.vm), [Step("delete", merge)])


def policy_snapshot_plan(app: Appliance, params: SnapshotParams) -> JobPlan:
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


def snapshot_out(snap: Any) -> dict[str, Any]:
    from appliance.snapshots.service import snapshot_dict

    return snapshot_dict(snap)
