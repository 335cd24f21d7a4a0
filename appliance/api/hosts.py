"""Host endpoints under /api/v1/hosts: the same operations as `cairn host`.

A VM's backup is a job (kind host.backup, on the resource `vm:<vm>@<host>`): it answers 202
with the job, whose result names the backup, listed as `<vm>@<host>`. Its start and stop are
jobs on that resource too (host.vm.start, host.vm.stop), answered once they ended, as a VM of
this appliance's."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from appliance.access.auth import Principal
from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from appliance.hosts.service import HOST_OPTIONS, HostCommandError, HostSpecError, HostUnreachableError
from appliance.jobs.params import (
    HostBackupParams,
    HostBackupRequest,
    HostStopRequest,
    HostVMStartParams,
    HostVMStopParams,
    JobParams,
    LibvirtRestoreParams,
    LibvirtRestoreRequest,
)
from vmm.hosts import HostError, HostVM

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep
from .jobs import SUBMIT_ERRORS, JobOut, awaited_job, submit_job


class HostIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["libvirt", "ssh"] = "libvirt"
    uri: str = Field(description="libvirt: its connection URI, e.g. qemu:///system; ssh: ssh://user@host[:port]")
    key_file: str | None = Field(None, description="ssh: the private key (a path on the appliance)")
    known_hosts: str | None = Field(None, description="ssh, and libvirt over qemu+ssh: a known_hosts file "
                                                      "naming the host's key")
    agent_dir: str | None = Field(None, description="ssh: where the agent lives on the host "
                                                    "(default /var/lib/cairn-agent)")
    scratch_dir: str | None = Field(None, description="libvirt: a directory on the host its QEMU can write "
                                                      "to, for backups' sockets and scratch files (default: "
                                                      "each domain's own directory, which it may write)")
    libvirt_dir: str | None = Field(None, description="libvirt on this machine: where this machine sees the "
                                                      "host's /var/lib/libvirt (default: there)")


class HostOut(BaseModel):
    name: str
    kind: str
    uri: str
    options: dict[str, Any]


class HostDiskOut(BaseModel):
    target: str
    path: str | None
    format: str
    kind: str = Field(description="where its data lives: file, block, network, volume...")
    device: str = Field(description="disk, lun, cdrom or floppy")
    readonly: bool
    shareable: bool
    data_file: str | None = Field(description="a qcow2 image's external data file")
    backing: list[str] = Field(description="the files below it in its chain, top first")


class HostVMOut(BaseModel):
    name: str
    uuid: str | None
    state: str
    vcpus: int
    memory_mib: int
    disks: list[HostDiskOut]


class HostVMAfterJob(HostVMOut):
    """A host's VM after its start or stop, and the job that did it."""
    job_id: str = Field(description="the host.vm.start or host.vm.stop job (its events say what happened)")


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the snapshot's name; each disk goes on in an overlay <image base>.<name>")


def _vm(vm: HostVM) -> HostVMOut:
    return HostVMOut.model_validate(vm.to_dict())


# A bad definition, a host that is not there or does not answer, and what it refuses.
router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"],
                   responses=raises(HostSpecError, HostUnreachableError, HostCommandError, NotFoundError,
                                    ConflictError, HostError))


@router.get("", response_model=list[HostOut])
def list_hosts(appliance: ApplianceDep) -> list[HostOut]:
    return [HostOut(**h.to_dict()) for h in appliance.hosts.list()]


@router.post("", response_model=HostOut, status_code=201)
def add_host(appliance: ApplianceDep, caller: Caller, body: HostIn) -> HostOut:
    for option in ("key_file", "known_hosts"):
        if (path := getattr(body, option)) is not None and option in HOST_OPTIONS[body.kind]:
            appliance.host_paths.readable_file(caller, path, option.replace("_", " "))
    return HostOut(**appliance.hosts.add(body.name, body.uri, body.kind, body.key_file, body.known_hosts,
                                         body.agent_dir, body.scratch_dir, body.libvirt_dir).to_dict())


@router.get("/{name}", response_model=HostOut)
def get_host(appliance: ApplianceDep, name: str) -> HostOut:
    return HostOut(**appliance.hosts.get(name).to_dict())


@router.delete("/{name}", status_code=204)
def remove_host(appliance: ApplianceDep, name: str) -> Response:
    appliance.hosts.remove(name)
    return Response(status_code=204)


@router.get("/{name}/vms", response_model=list[HostVMOut])
def list_vms(appliance: ApplianceDep, name: str) -> list[HostVMOut]:
    return [_vm(v) for v in appliance.hosts.vms(name)]


@router.get("/{name}/vms/{vm}", response_model=HostVMOut)
def get_vm(appliance: ApplianceDep, name: str, vm: str) -> HostVMOut:
    return _vm(appliance.hosts.vm(name, vm))


async def _after_job(appliance: Appliance, caller: Principal, name: str, vm: str, kind: str,
                     params: JobParams) -> HostVMAfterJob:
    """Like a VM of this appliance's start and stop (api/vms.py): the job, waited for."""
    job = await awaited_job(appliance, caller, kind, params)
    info = await run_in_threadpool(appliance.hosts.vm, name, vm)
    return HostVMAfterJob(**_vm(info).model_dump(), job_id=job.id)


@router.post("/{name}/vms/{vm}/start", response_model=HostVMAfterJob, responses=SUBMIT_ERRORS)
async def start_vm(appliance: ApplianceDep, caller: Caller, name: str, vm: str) -> HostVMAfterJob:
    """A host.vm.start job on `vm:<vm>@<host>`, waited for: the VM then, and the job's id."""
    return await _after_job(appliance, caller, name, vm, "host.vm.start", HostVMStartParams(host=name, vm=vm))


@router.post("/{name}/vms/{vm}/stop", response_model=HostVMAfterJob, responses=SUBMIT_ERRORS)
async def stop_vm(appliance: ApplianceDep, caller: Caller, name: str, vm: str,
                  body: HostStopRequest | None = None) -> HostVMAfterJob:
    """A host.vm.stop job, waited for; a forced one cuts short a graceful one that is waiting."""
    params = HostVMStopParams(host=name, vm=vm, **(body or HostStopRequest()).model_dump())
    return await _after_job(appliance, caller, name, vm, "host.vm.stop", params)


@router.get("/{name}/vms/{vm}/snapshots", response_model=list[str])
def list_snapshots(appliance: ApplianceDep, name: str, vm: str) -> list[str]:
    return appliance.hosts.snapshots(name, vm)


@router.post("/{name}/vms/{vm}/snapshots", response_model=list[str], status_code=201)
def create_snapshot(appliance: ApplianceDep, name: str, vm: str, body: SnapshotIn) -> list[str]:
    """A disk-only snapshot of a libvirt domain, all disks at one instant; returns its snapshots."""
    return appliance.hosts.snapshot(name, vm, body.name)


@router.post("/{name}/vms/{vm}/backups", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def back_up_vm(appliance: ApplianceDep, caller: Caller, name: str, vm: str,
               body: HostBackupRequest | None = None) -> JobOut:
    params = HostBackupParams(host=name, vm=vm, **(body or HostBackupRequest()).model_dump())
    return submit_job(appliance, caller, "host.backup", params)


@router.post("/{name}/restores", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def restore_domain(appliance: ApplianceDep, caller: Caller, name: str, body: LibvirtRestoreRequest) -> JobOut:
    """Restore a libvirt domain's backup into this libvirt host, as a new domain or over the one
    backed up (the admin's: its disks go to any directory of the host)."""
    return submit_job(appliance, caller, "restore.libvirt", LibvirtRestoreParams(host=name, **body.model_dump()))
