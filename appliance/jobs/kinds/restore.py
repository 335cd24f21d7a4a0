"""Restores as jobs: a disk into a target, a whole VM as a new VM or over the one it came from,
and the start of an instant restore.

The restore services undo their own failures (a partial target file is removed, a new VM that
could not be filled is deleted, an over-restore swaps the disks in one transaction or not at
all). What a job's undo adds is the case they cannot cover: the process died inside them. Then
the new VM a job was making is deleted; an over-restore needs nothing, the next one removes
what this one left.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.access.roles import Role
from appliance.errors import ConflictError

from ..params import DiskRestoreParams, InstantRestoreParams, RestoreAsNewParams, RestoreOverParams
from ..plan import JobKind, JobPlan, Step, StepContext
from ..resources import target_resource, vm_resource
from .common import delete_made_vms, disk_progress, making_vms, vm_exists

if TYPE_CHECKING:
    from appliance.context import Appliance
    from restore.destinations import Destination


def restore_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def target_usable(params: DiskRestoreParams) -> None:
        """The disk is in the backup, and the target is one a restore may write (an existing
        file only with force)."""
        from restore import RestoreError
        from restore.destinations import NBD_SCHEMES, SSH_SCHEMES

        manifest = app.store.get_backup(params.backup_id)
        if params.disk is not None:
            manifest.disk(params.disk)
        try:
            destination_of(params)
        except RestoreError as e:
            raise ConflictError(str(e)) from e
        local = not params.target.startswith(NBD_SCHEMES + SSH_SCHEMES)
        if local and Path(params.target).is_file() and not params.force:
            raise ConflictError(f"{params.target} already exists; restore with --force (the API's force) to replace it")

    def new_vm(params: RestoreAsNewParams | InstantRestoreParams) -> None:
        app.store.get_backup(params.backup_id)
        if vm_exists(app, params.name):
            raise ConflictError(f"VM {params.name} already exists")

    def backup_of_vm(params: RestoreOverParams) -> None:
        if (vm := app.store.get_backup(params.backup_id).vm) != params.vm:
            raise ConflictError(f"backup {params.backup_id} is of VM {vm}, not {params.vm}: restore it over its own "
                                "VM, or as a new one")
        app.vms.spec(params.vm)

    return {
        "restore.disk": JobKind(DiskRestoreParams, lambda params: disk_plan(app, params), target_usable),
        "restore.new_vm": JobKind(RestoreAsNewParams, lambda params: new_vm_plan(app, params), new_vm),
        "restore.over_vm": JobKind(RestoreOverParams, lambda params: over_vm_plan(app, params), backup_of_vm),
        "restore.instant": JobKind(InstantRestoreParams, lambda params: instant_plan(app, params), new_vm),
    }


def disk_plan(app: Appliance, params: DiskRestoreParams) -> JobPlan:
    """A file appears under its name only when complete; a device or an NBD export is written
    in place (force), which no undo could take back."""

    async def restore(ctx: StepContext) -> None:
        from restore import restore_disk

        destination = destination_of(params)

        def progress(done: int, total: int) -> None:
            ctx.progress(done / total if total else 1.0, {"disk": params.disk or "disk", "done": done, "total": total})

        result = await asyncio.to_thread(restore_disk, app.store, params.backup_id, params.disk, destination,
                                         progress=progress, verify=params.verify)
        ctx.result.update(backup_id=params.backup_id, disk=params.disk, target=params.target,
                          bytes_written=result.bytes_written, seconds=result.seconds, verified=result.verified)

    # A target is any path or URL the appliance's host reaches: the admin's, like its route.
    return JobPlan(target_resource(params.target), [Step("restore", restore)], needs=Role.ADMIN)


def destination_of(params: DiskRestoreParams) -> Destination:
    from restore.destinations import parse_destination

    return parse_destination(params.target, params.format, params.force,
                             ssh_key=Path(params.ssh_key) if params.ssh_key else None,
                             known_hosts=Path(params.known_hosts) if params.known_hosts else None)


def new_vm_plan(app: Appliance, params: RestoreAsNewParams) -> JobPlan:
    async def restore(ctx: StepContext) -> None:
        with making_vms(ctx, [params.name]):
            result = await asyncio.to_thread(app.restores.as_new_vm, params.backup_id, params.name, params.verify,
                                             disk_progress(ctx), params.storage_pool)
        ctx.result.update(vars(result))

    return JobPlan(vm_resource(params.name), [Step("restore", restore, delete_made_vms(app))])


def over_vm_plan(app: Appliance, params: RestoreOverParams) -> JobPlan:
    async def restore(ctx: StepContext) -> None:
        result = await app.restores.over_vm(params.backup_id, params.vm, params.stop, params.verify,
                                            disk_progress(ctx))
        ctx.result.update(vars(result))

    return JobPlan(vm_resource(params.vm), [Step("restore", restore)])


def instant_plan(app: Appliance, params: InstantRestoreParams) -> JobPlan:
    """Done once the VM runs from the backup and QEMU copies its disks in; the copy goes on after
    the job (GET /instant-restores/{vm} follows it)."""

    async def start(ctx: StepContext) -> None:
        with making_vms(ctx, [params.name]):
            state = await app.restores.instant.start(params.backup_id, params.name, params.speed, params.storage_pool)
        ctx.result.update(state.to_dict())

    async def discard(ctx: StepContext) -> None:
        if ctx.memo.get("making") and vm_exists(app, params.name):
            await app.restores.instant.discard(params.name)

    return JobPlan(vm_resource(params.name), [Step("start", start, discard)])
