"""VM management endpoints: lifecycle, resize, disks and NICs added or removed, clones, HA, scheduling groups,
the image library and the VNC console (one-time tickets, then a WebSocket proxied to the VM's VNC socket).

The HA supervisor is run by the server on the node that leads (appliance/server/services.py).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.requests import HTTPConnection
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from appliance.access.auth import Principal
from appliance.access.visibility import visibility, vm_visible
from appliance.catalog.query import QueryError
from appliance.context import Appliance
from appliance.deletion.deletables import deletion_service
from appliance.deletion.protection import Impact
from appliance.errors import ConflictError, NotFoundError
from appliance.jobs.params import (
    CloneParams,
    CloneRequest,
    MigrateParams,
    MigrateRequest,
    StartRequest,
    StopRequest,
    VMStartParams,
    VMStopParams,
)
from appliance.units import parse_size
from appliance.vms.devices import NewDisk, NewNic
from appliance.vms.records import HA_MAX_RESTARTS, HA_MAX_WINDOW_SECONDS, VMRecord
from appliance.vms.service import VMOptions
from vmm import VMError
from vmm.console import ConsoleTokens, vnc_password
from vmm.images_library import ImageRecord
from vmm.placement import SchedulingGroup
from vmm.spec import NIC_MODELS, NicSpec, random_mac

from .answers import raises
from .auth import Caller, still_signed_in
from .dependencies import ApplianceDep, the_appliance
from .jobs import SUBMIT_ERRORS, JobOut, awaited_job, submit_job
from .listing import Query
from .models import StartedVM, StoppedVM, VMDetail, VMOut

CONSOLE_PATH = "/api/v1/console"
PROXY_READ_SIZE = 64 * 1024
CONSOLE_CHECK = 2.0   # seconds between checks that an open console's session or key still stands
# "10G", "512M" or a number of bytes; a bad size is a 422 like any other invalid field.
Size = Annotated[int, BeforeValidator(lambda v: parse_size(str(v)))]


class NicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["user", "tap", "bridge"] = "user"
    mac: str | None = None
    tap: str | None = None
    bridge: str | None = None


class VMCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    vcpus: int = Field(1, strict=True, ge=1, le=255)
    memory_mib: int = Field(256, strict=True, ge=16)
    disks: list[Size] = Field([], description="sizes of new blank disks, e.g. 10G (the first one "
                                             "is the size of the overlay on `image`)")
    image: str | None = Field(None, description="library disk image for the first disk (thin)")
    iso: str | None = Field(None, description="library ISO in the cdrom (booted first)")
    storage_pool: str | None = Field(None, description="storage pool for the disks (/api/v1/pools)")
    compute_pool: str | None = Field(None, description="run it on a host of this compute pool, whose hosts see "
                                                       "its storage (default: this machine only)")
    profile: Literal["modern", "legacy"] = "modern"
    nics: list[NicIn] = []
    boot: list[Literal["disk", "cdrom", "network"]] = []
    console: bool = True
    ha: bool = False
    kernel: str | None = Field(None, description="direct boot: a library image (raw, uploaded as it is) or, "
                                                 "for admins only, an absolute path on the appliance host")
    initrd: str | None = Field(None, description="its initramfs, named the same way")
    append: str | None = None
    start: Literal["running", "paused"] | None = Field(
        None, description="start it once created; paused: its guest runs no code until resumed")


class Resize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vcpus: int | None = Field(None, strict=True, ge=1, le=255)
    memory_mib: int | None = Field(None, strict=True, ge=16)


class DiskResize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: Size = Field(description="the new size, e.g. 20G; disks only grow")


class DiskAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: Size | None = Field(None, description="e.g. 10G; on `image` at least the image's (default: its size)")
    format: Literal["qcow2", "raw"] | None = Field(None, description="default qcow2 (raw in a Ceph pool)")
    image: str | None = Field(None, description="a library disk image the new disk starts as (a thin layer over it)")
    storage_pool: str | None = Field(None, description="default: the storage pool of the VM's first disk")


class NicAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: str | None = Field(None, description="a network (/api/v1/networks): a tap on its bridge, an address "
                                                  "reserved for the MAC; without one, `mode` says how it connects")
    mode: Literal["user", "tap", "bridge"] = "user"
    tap: str | None = None
    bridge: str | None = None
    model: str | None = Field(None, description=f"the emulated card: {', '.join(NIC_MODELS)}; default the OS "
                                                "profile's")
    mac: str | None = Field(None, description="default a random 52:54:00:xx:xx:xx")


class HARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    max_restarts: int = Field(3, ge=1, le=HA_MAX_RESTARTS, strict=True)
    window_seconds: int = Field(600, ge=1, le=HA_MAX_WINDOW_SECONDS, strict=True)


class ComputePoolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pool: str | None = Field(description="a compute pool, or null: this machine only")


class ConsoleTicket(BaseModel):
    token: str = Field(description="one-time: opens one WebSocket within ttl_seconds")
    url: str
    password: str = Field(description="the VM's VNC password (VNC authentication, 8 characters)")
    ttl_seconds: float


class ImageImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="admins: a regular file on the appliance host, outside its data dir")
    kind: Literal["iso", "disk"] | None = None


class ImageFromVM(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    disk: str | None = None


class GroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["vm-anti-affinity", "vm-affinity", "vm-host-anti-affinity", "vm-host-affinity"]
    enforcement: Literal["mandatory", "preferred"]
    vms: list[str]
    hosts: list[str] = []


class GroupOut(GroupIn):
    name: str


# Every route may meet QEMU's refusals, a VM that is not there and one in the way.
router = APIRouter(tags=["vms"], responses=raises(VMError, NotFoundError, ConflictError))


@router.get("/api/v1/vms", response_model=list[VMOut], responses=raises(QueryError))
def list_vms(appliance: ApplianceDep, caller: Caller, query: Query, response: Response) -> list[VMOut]:
    """A page of the VMs the caller sees, by name unless `sort` says otherwise (the list query:
    docs/api.md); fields: name, state, pid, vcpus, memory_mib."""
    return [VMOut.of(v) for v in appliance.vms.page(query, vm_visible(VMRecord.name, caller), response)]


@router.get("/api/v1/vms/{name}", response_model=VMDetail, responses=raises(NotFoundError))
def get_vm(appliance: ApplianceDep, name: str) -> VMDetail:
    """The list's fields and the rest of the VM's definition (profile, NICs, boot, HA...)."""
    return VMDetail.of(appliance.vms.show(name))


def boot_file(appliance: Appliance, caller: Principal, value: str | None, what: str) -> str | None:
    """A direct-boot file by library image name (anyone), or by host path (an admin's)."""
    if value is None:
        return None
    if "/" in value:
        return str(appliance.host_paths.readable_file(caller, value, what))
    return str(appliance.vms.images.verified_raw_file(value))


@router.post("/api/v1/vms", response_model=VMDetail, status_code=201)
async def create_vm(appliance: ApplianceDep, caller: Caller, body: VMCreate) -> VMDetail:
    """The new VM is the caller's: only they (and admins) see it until an admin shares it.
    With `start`, a vm.start job starts it once defined, and the answer waits for it."""
    vms, seen = appliance.vms, visibility(appliance)
    seen.claim(caller, body.name)
    kernel = boot_file(appliance, caller, body.kernel, "kernel")
    initrd = boot_file(appliance, caller, body.initrd, "initrd")
    nics = [NicSpec(f"net{i}", n.mode, n.mac or random_mac(), n.tap, n.bridge)
            for i, n in enumerate(body.nics)]
    options = VMOptions(image=body.image, iso=body.iso, profile=body.profile, nics=nics,
                        boot=list(body.boot), vnc=body.console, storage_pool=body.storage_pool,
                        compute_pool=body.compute_pool)
    await run_in_threadpool(vms.create, body.name, body.disks,
                            body.memory_mib, body.vcpus, kernel, initrd, body.append,
                            None, options)
    seen.own(caller, body.name)
    if body.ha:
        vms.set_ha(body.name, True)
    if body.start:   # a start that fails leaves the VM defined, stopped, and answers why
        return await start_vm(appliance, caller, body.name, StartRequest(paused=body.start == "paused"))
    return VMDetail.of(vms.show(body.name))


@router.post("/api/v1/vms/{name}/start", response_model=StartedVM, responses=SUBMIT_ERRORS)
async def start_vm(appliance: ApplianceDep, caller: Caller, name: str, body: StartRequest | None = None) -> StartedVM:
    """A vm.start job, waited for (after any job that holds the VM: a backup, a snapshot...):
    the VM as it is then, and the job's id."""
    job = await awaited_job(appliance, caller, "vm.start", VMStartParams(vm=name, **(body or StartRequest()).model_dump()))
    return StartedVM.after(await run_in_threadpool(appliance.vms.show, name), job)


@router.post("/api/v1/vms/{name}/stop", response_model=StoppedVM, responses=SUBMIT_ERRORS)
async def stop_vm(appliance: ApplianceDep, caller: Caller, name: str, body: StopRequest | None = None) -> StoppedVM:
    """A vm.stop job, waited for: the VM as it is then, how it stopped, and the job's id. A
    graceful stop waits its turn after the VM's other jobs; a forced one also, but it cuts short
    a graceful stop that waits for its guest."""
    job = await awaited_job(appliance, caller, "vm.stop", VMStopParams(vm=name, **(body or StopRequest()).model_dump()))
    return StoppedVM.after(await run_in_threadpool(appliance.vms.show, name), job)


@router.post("/api/v1/vms/{name}/reboot", response_model=VMDetail)
async def reboot_vm(appliance: ApplianceDep, name: str) -> VMDetail:
    return VMDetail.of(await appliance.vms.reboot(name))


@router.post("/api/v1/vms/{name}/pause", response_model=VMDetail)
async def pause_vm(appliance: ApplianceDep, name: str) -> VMDetail:
    return VMDetail.of(await appliance.vms.pause(name))


@router.post("/api/v1/vms/{name}/resume", response_model=VMDetail)
async def resume_vm(appliance: ApplianceDep, name: str) -> VMDetail:
    return VMDetail.of(await appliance.vms.resume(name))


@router.patch("/api/v1/vms/{name}", response_model=VMDetail)
def resize_vm(appliance: ApplianceDep, name: str, body: Resize) -> VMDetail:
    appliance.vms.resize(name, vcpus=body.vcpus, memory_mib=body.memory_mib)
    return VMDetail.of(appliance.vms.show(name))


@router.post("/api/v1/vms/{name}/disks/{disk}/resize")
async def resize_disk(appliance: ApplianceDep, name: str, disk: str, body: DiskResize) -> dict[str, Any]:
    return {"disk": disk, "size": await appliance.vms.grow_disk(name, disk, body.size)}


@router.post("/api/v1/vms/{name}/disks", response_model=VMDetail, status_code=201)
def add_disk(appliance: ApplianceDep, name: str, body: DiskAdd) -> VMDetail:
    """A new disk for the stopped VM (blank, or a thin layer on a library image), after its
    others; its guest sees it from the next start. Answers the VM as it is now."""
    appliance.vms.hardware.add_disk(name, NewDisk(**body.model_dump()))
    return VMDetail.of(appliance.vms.show(name))


@router.delete("/api/v1/vms/{name}/disks/{disk}", response_model=VMDetail)
def remove_disk(appliance: ApplianceDep, name: str, disk: str, delete_file: bool = False) -> VMDetail:
    """Take a disk (not the first, the boot disk) out of the stopped VM. Its file stays where it
    is unless `?delete_file=true`; refused while a snapshot holds the disk or a backup reads it."""
    appliance.vms.hardware.remove_disk(name, disk, delete_file)
    return VMDetail.of(appliance.vms.show(name))


@router.post("/api/v1/vms/{name}/nics", response_model=VMDetail, status_code=201)
def add_nic(appliance: ApplianceDep, name: str, body: NicAdd) -> VMDetail:
    """A new NIC for the stopped VM: on a network (an address reserved for its MAC), or in
    mode user, tap or bridge. Answers the VM as it is now."""
    appliance.vms.hardware.add_nic(name, NewNic(**body.model_dump()))
    return VMDetail.of(appliance.vms.show(name))


@router.delete("/api/v1/vms/{name}/nics/{mac}", response_model=VMDetail)
def remove_nic(appliance: ApplianceDep, name: str, mac: str) -> VMDetail:
    """Take the NIC with this MAC out of the stopped VM (on a network: its address is released)."""
    appliance.vms.hardware.remove_nic(name, mac)
    return VMDetail.of(appliance.vms.show(name))


@router.delete("/api/v1/vms/{name}", response_model=Impact)
def delete_vm(appliance: ApplianceDep, name: str, dry_run: bool = False) -> Impact:
    """Under the deletion rules (kind "vm"; delayed by default: the stopped VM waits a week in
    the recycle bin, restorable). `?dry_run=true` only says what it would take."""
    deletions = deletion_service(appliance)
    return deletions.preview("vm", name) if dry_run else deletions.delete("vm", name)


@router.post("/api/v1/vms/{name}/clones", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def clone_vm(appliance: ApplianceDep, caller: Caller, name: str, body: CloneRequest) -> JobOut:
    """A job on the source VM; its result names the clones (GET /api/v1/vms/{clone} shows each)."""
    return submit_job(appliance, caller, "vm.clone", CloneParams(source=name, **body.model_dump()))


@router.put("/api/v1/vms/{name}/compute-pool", response_model=VMDetail)
def set_compute_pool(appliance: ApplianceDep, name: str, body: ComputePoolRequest) -> VMDetail:
    """From its next start the VM runs on a host of this pool (or on this machine only)."""
    appliance.vms.placement.set_compute_pool(name, body.pool)
    return VMDetail.of(appliance.vms.show(name))


@router.post("/api/v1/vms/{name}/migrations", response_model=JobOut, status_code=202, responses=SUBMIT_ERRORS)
def migrate_vm(appliance: ApplianceDep, caller: Caller, name: str, body: MigrateRequest) -> JobOut:
    """Move the running VM to another host of its compute pool, live: a job on the VM whose
    result says what it cost (total and paused milliseconds, bytes sent)."""
    return submit_job(appliance, caller, "vm.migrate", MigrateParams(vm=name, **body.model_dump()))


@router.get("/api/v1/vms/{name}/streams")
async def clone_streams(appliance: ApplianceDep, name: str) -> dict[str, float]:
    """An instant clone's background streams: disk -> fraction copied (empty: independent)."""
    appliance.vms.spec(name)   # a VM that is not there is not found, not one without streams
    return await appliance.vms.clone_progress(name)


@router.put("/api/v1/vms/{name}/ha", response_model=VMDetail)
def set_ha(appliance: ApplianceDep, name: str, body: HARequest) -> VMDetail:
    appliance.vms.set_ha(name, body.enabled, body.max_restarts, body.window_seconds)
    return VMDetail.of(appliance.vms.show(name))


# -- the console ----------------------------------------------------------------------------

def serve_consoles(api: FastAPI) -> None:
    """This app's console tickets (in memory: a ticket is good only in the process that issued it)."""
    api.state.console_tickets = ConsoleTokens()


def console_tickets(connection: HTTPConnection) -> ConsoleTokens[tuple[str, str | None]]:
    """A console ticket grants one VM's console to the credentials that asked for it."""
    tickets: ConsoleTokens[tuple[str, str | None]] = connection.app.state.console_tickets
    return tickets


@router.post("/api/v1/vms/{name}/console", response_model=ConsoleTicket)
def open_console(appliance: ApplianceDep, name: str, request: Request,
                 tickets: Annotated[ConsoleTokens[tuple[str, str | None]], Depends(console_tickets)]) -> ConsoleTicket:
    vms = appliance.vms
    view = vms.show(name)
    password = vnc_password(vms.driver.paths(name))
    if not view.spec.vnc:
        raise ConflictError(f"VM {name} has no console (create it with console on)")
    if view.status.state not in ("running", "paused") or password is None:
        raise ConflictError(f"VM {name} is {view.status.state}: start it to open its console")
    token = tickets.issue((name, request.headers.get("authorization")))
    return ConsoleTicket(token=token, url=f"{CONSOLE_PATH}?token={token}", password=password,
                         ttl_seconds=tickets.ttl_seconds)


async def console_socket(ws: WebSocket) -> None:
    """The WebSocket of a console ticket: a plain Starlette route, which the API's gate (a bearer
    token per request) does not guard; the one-time ticket is its credential."""
    appliance = the_appliance(ws)
    grant = console_tickets(ws).redeem(ws.query_params.get("token", ""))
    if grant is None:
        await ws.close(code=1008, reason="unknown, used or expired console token")
        return
    vm, authorization = grant

    def signed_in() -> Awaitable[bool]:
        return run_in_threadpool(still_signed_in, appliance, authorization)
    if not await signed_in():
        await ws.close(code=1008, reason="the session or key that asked for this console has ended")
        return
    try:
        reader, writer = await asyncio.open_unix_connection(appliance.vms.driver.paths(vm).vnc_socket)
    except OSError:
        await ws.close(code=1011, reason=f"the console of VM {vm} is not reachable")
        return
    # noVNC asks for the "binary" subprotocol; plain clients ask for none.
    wanted = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="binary" if "binary" in wanted else None)
    await _relay(ws, reader, writer, signed_in)


router.routes.append(WebSocketRoute(CONSOLE_PATH, console_socket, name="console"))


# -- images ---------------------------------------------------------------------------------

@router.get("/api/v1/images", tags=["images"])
def list_images(appliance: ApplianceDep) -> list[dict[str, Any]]:
    return [r.to_dict() for r in appliance.vms.images.list()]


@router.get("/api/v1/images/{image}", tags=["images"])
def get_image(appliance: ApplianceDep, image: str) -> dict[str, Any]:
    return appliance.vms.images.get(image).to_dict()


@router.put("/api/v1/images/{image}", status_code=201, tags=["images"])
async def upload_image(appliance: ApplianceDep, image: str, request: Request,
                       kind: Literal["iso", "disk"] | None = None) -> dict[str, Any]:
    """The request body is the image's bytes (application/octet-stream), streamed to disk."""
    upload = appliance.vms.images.upload(image, kind)
    try:
        async for block in request.stream():
            await run_in_threadpool(upload.write, block)
    except BaseException:
        upload.abort()
        raise
    record: ImageRecord = await run_in_threadpool(upload.commit)
    return record.to_dict()


@router.post("/api/v1/images/{image}/import", status_code=201, tags=["images"])
async def import_image(appliance: ApplianceDep, caller: Caller, image: str, body: ImageImport) -> dict[str, Any]:
    source = appliance.host_paths.readable_file(caller, body.path, "image to import")
    record = await run_in_threadpool(appliance.vms.images.import_file, image, source, body.kind)
    return record.to_dict()


@router.post("/api/v1/images/{image}/verify", tags=["images"])
async def verify_image(appliance: ApplianceDep, image: str) -> dict[str, Any]:
    return (await run_in_threadpool(appliance.vms.images.verify, image)).to_dict()


@router.post("/api/v1/vms/{name}/image", status_code=201, tags=["images"])
async def image_from_vm(appliance: ApplianceDep, name: str, body: ImageFromVM) -> dict[str, Any]:
    record = await run_in_threadpool(appliance.vms.image_from_vm, name, body.image, body.disk)
    return record.to_dict()


@router.delete("/api/v1/images/{image}", status_code=204, tags=["images"])
def delete_image(appliance: ApplianceDep, image: str) -> None:
    appliance.vms.delete_image(image)


# -- scheduling groups ----------------------------------------------------------------------

@router.get("/api/v1/scheduling-groups", response_model=list[GroupOut], tags=["placement"])
def list_groups(appliance: ApplianceDep, caller: Caller) -> list[GroupOut]:
    return [GroupOut(name=g.name, policy=g.policy, enforcement=g.enforcement, vms=sorted(g.vms),
                     hosts=sorted(g.hosts)) for g in appliance.vms.groups(visibility(appliance).seen(caller))]


@router.put("/api/v1/scheduling-groups/{group}", response_model=GroupOut, tags=["placement"])
def put_group(appliance: ApplianceDep, caller: Caller, group: str, body: GroupIn) -> GroupOut:
    appliance.vms.save_group(SchedulingGroup(group, body.policy, body.enforcement, frozenset(body.vms),
                                             frozenset(body.hosts)), visibility(appliance).seen(caller))
    return GroupOut(name=group, **body.model_dump())


@router.delete("/api/v1/scheduling-groups/{group}", status_code=204, tags=["placement"])
def delete_group(appliance: ApplianceDep, caller: Caller, group: str) -> None:
    appliance.vms.delete_group(group, visibility(appliance).seen(caller))


async def _relay(ws: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 signed_in: Callable[[], Awaitable[bool]]) -> None:
    """Copy bytes both ways until either side hangs up, or the credentials that opened the
    console are revoked (asked every few seconds)."""
    async def to_vm() -> None:
        with suppress(WebSocketDisconnect):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes") or (message.get("text") or "").encode()
                writer.write(data)
                await writer.drain()

    async def to_client() -> None:
        while data := await reader.read(PROXY_READ_SIZE):
            await ws.send_bytes(data)

    async def while_signed_in() -> None:
        while await signed_in():
            await asyncio.sleep(CONSOLE_CHECK)

    tasks = [asyncio.create_task(to_vm()), asyncio.create_task(to_client()), asyncio.create_task(while_signed_in())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        with suppress(Exception):
            await ws.close()
