"""Clones as jobs: they read the source VM's disks, so they run on its resource, never beside its
snapshot operations or a restore over it. VMService.clone removes the clones it made if it
fails; the job's undo deletes them if the process died inside it."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from appliance.errors import ConflictError

from ..params import CloneParams
from ..plan import JobKind, JobPlan, Step, StepContext
from ..resources import vm_resource
from .common import delete_made_vms, making_vms, vm_exists

if TYPE_CHECKING:
    from appliance.context import Appliance


def clone_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def names_new(params: CloneParams) -> None:
        app.vms.spec(params.source)
        taken = [name for name in params.names if vm_exists(app, name)]
        if taken or len(set(params.names)) != len(params.names):
            raise ConflictError(f"clone names must be new and distinct: {', '.join(taken) or params.names}")

    return {"vm.clone": JobKind(CloneParams, lambda params: clone_plan(app, params), names_new)}


def clone_plan(app: Appliance, params: CloneParams) -> JobPlan:
    async def clone(ctx: StepContext) -> None:
        with making_vms(ctx, list(params.names)):
            specs = await asyncio.to_thread(app.vms.clone, params.source, list(params.names), params.mode)
        ctx.result.update(source=params.source, mode=params.mode, vms=[spec.name for spec in specs],
                          clones=[app.vms.show(spec.name).to_dict() for spec in specs])

    return JobPlan(vm_resource(params.source), [Step("clone", clone, delete_made_vms(app))])
