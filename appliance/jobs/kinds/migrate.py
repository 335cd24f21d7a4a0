"""Live migrations as jobs: on the VM's resource, so no backup, snapshot, clone or restore of it
runs meanwhile. The step's undo settles a migration that failed or whose process died: the
guest stays on whichever host runs it and the record follows (appliance/vms/migrate.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..params import MigrateParams
from ..plan import JobKind, JobPlan, Step, StepContext
from ..resources import vm_resource

if TYPE_CHECKING:
    from appliance.context import Appliance
    from appliance.vms.migrate import VMMigration


def migrate_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def is_possible(params: MigrateParams) -> None:
        migration(app).check(params.vm, params.host)

    return {"vm.migrate": JobKind(MigrateParams, lambda params: migrate_plan(app, params), is_possible)}


def migration(app: Appliance) -> VMMigration:
    from appliance.vms.migrate import VMMigration

    return VMMigration(app.vms)


def migrate_plan(app: Appliance, params: MigrateParams) -> JobPlan:
    async def migrate(ctx: StepContext) -> None:
        moves = migration(app)
        move = await moves.plan(params.vm, params.host)
        ctx.remember(source=move.source.name, target=move.target.name)
        ctx.result.update(await moves.run(move, params.timeout))

    async def settle(ctx: StepContext) -> None:
        if "source" in ctx.memo:
            ctx.result["runs_on"] = await migration(app).settle(params.vm, ctx.memo["source"], ctx.memo["target"])

    return JobPlan(vm_resource(params.vm), [Step("migrate", migrate, settle)])
