"""Restores into libvirt as jobs: a libvirt domain's backup defined again as a new domain, or
over the domain it was taken of, on the domain's resource (`vm:<domain>@<host>`, as its backups).

LibvirtRestoreService undoes its own failures (the disks written are removed and nothing is
defined, or the old images stay the domain's). A process that dies inside it leaves partial
files, which the sweep of helper records removes, or restored files the domain never opened,
which the next restore over the domain removes: the job's undo has nothing to add.
"""
from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from appliance.access.roles import Role
from appliance.backups.host import backup_vm_name
from appliance.errors import ConflictError

from ..params import LibvirtRestoreParams
from ..plan import JobKind, JobPlan, Step, StepContext
from ..resources import vm_resource
from .common import disk_progress

if TYPE_CHECKING:
    from appliance.context import Appliance


def libvirt_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def restorable(params: LibvirtRestoreParams) -> None:
        """A libvirt host, and a backup that carries a domain's definition."""
        if (kind := app.hosts.get(params.host).kind) != "libvirt":
            raise ConflictError(f"host {params.host} is a {kind} host: restores into libvirt need a libvirt host")
        domain_of(app, params)

    return {"restore.libvirt": JobKind(LibvirtRestoreParams, lambda params: libvirt_plan(app, params), restorable)}


def domain_of(app: Appliance, params: LibvirtRestoreParams) -> str:
    """The domain the job makes or replaces."""
    from appliance.restores.libvirt import backed_up_domain

    if params.name is not None:
        return params.name
    return str(backed_up_domain(app.store.get_backup(params.backup_id))["name"])


def libvirt_plan(app: Appliance, params: LibvirtRestoreParams) -> JobPlan:
    async def restore(ctx: StepContext) -> None:
        from appliance.restores.libvirt import LibvirtRestoreService

        restores = LibvirtRestoreService(app.store, app.hosts)
        if params.over:
            done = await asyncio.to_thread(restores.over_domain, params.host, params.backup_id, params.stop,
                                           params.verify, disk_progress(ctx))
        else:
            assert params.name is not None   # the params' validator: a new domain has a name
            done = await asyncio.to_thread(restores.as_new_domain, params.host, params.backup_id, params.name,
                                           params.directory, params.pool, params.start, params.verify,
                                           disk_progress(ctx))
        ctx.result.update(asdict(done))

    # The disks go to any directory of the host, and a domain's old images are removed: the admin's.
    return JobPlan(vm_resource(backup_vm_name(params.host, domain_of(app, params))), [Step("restore", restore)],
                   needs=Role.ADMIN)
