"""Pools and VM networks over the API: /api/v1/pools (compute, storage, address pools and an
address pool's leases) and /api/v1/networks (bridge + address pool + dnsmasq, VM attachments).

Errors answer like the rest of the API: a bad definition 400 (or 422 when the body does not
parse), something missing 404, something in the way (in use, exists, exhausted) 409; a failing
`ip` or dnsmasq is vmm's NetworkError, answered 400 with its own words.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from appliance.access.auth import Principal
from appliance.access.host_paths import HostPaths
from appliance.access.visibility import Seen, visibility
from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from appliance.pools.service import PoolError, PoolService, rbd_conf
from vmm import VMError

from .answers import raises
from .auth import Caller

PoolKind = Literal["compute", "storage", "address"]


class ComputePoolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["compute"]
    name: str
    hosts: list[str] = Field(description="host names (`local` is this appliance)")


class StoragePoolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["storage"]
    name: str
    type: Literal["dir", "nfs", "rbd"] = Field("dir", description="a local directory, the mount point of an NFS "
                                                                  "export, or a Ceph pool (disks as RBD images)")
    path: str = Field(description="dir, nfs: an absolute path of an existing, writable directory; rbd: "
                                  "rbd:POOL[/NAMESPACE][:conf=PATH][:id=USER]")


class AddressPoolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["address"]
    name: str
    subnet: str = Field(description="IPv4 subnet, e.g. 10.77.0.0/24")
    gateway: str | None = Field(None, description="default: the subnet's first host address")
    first: str | None = Field(None, description="first address handed out (default: after the gateway)")
    last: str | None = Field(None, description="last address handed out (default: the last host address)")


PoolIn = Annotated[ComputePoolIn | StoragePoolIn | AddressPoolIn, Field(discriminator="kind")]


class LeaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: str = Field(min_length=1, max_length=127, description="who holds the address")


class NetworkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    address_pool: str
    bridge: str | None = Field(None, description="the Linux bridge to create (default cbr-<name>)")
    netns: str | None = Field(None, description="an existing network namespace for the bridge "
                                                "and dnsmasq (default: the host's)")


class AttachIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm: str


def pools_router(pools: PoolService, paths: HostPaths, seen: Callable[[Principal], Seen]) -> APIRouter:
    # A bad definition, what is not there or in the way, and `ip` or dnsmasq refusing.
    router = APIRouter(tags=["pools"], responses=raises(PoolError, NotFoundError, ConflictError, VMError))

    def pool_dicts(kind: PoolKind | None) -> list[dict[str, Any]]:
        listed: list[Any] = []
        if kind in (None, "compute"):
            listed += pools.compute_pools()
        if kind in (None, "storage"):
            listed += pools.storage_pools()
        if kind in (None, "address"):
            listed += pools.address_pools()
        return [p.to_dict() for p in listed]

    @router.get("/api/v1/pools")
    def list_pools(kind: Annotated[PoolKind | None, Query()] = None) -> list[dict[str, Any]]:
        return pool_dicts(kind)

    @router.post("/api/v1/pools", status_code=201)
    async def create_pool(caller: Caller, body: PoolIn) -> dict[str, Any]:
        if isinstance(body, ComputePoolIn):
            return pools.create_compute(body.name, body.hosts).to_dict()
        if isinstance(body, StoragePoolIn):
            if body.type == "rbd":
                # The conf names the cluster and, often, the keyring: a file the caller must be allowed to name.
                if (conf := await run_in_threadpool(rbd_conf, body.name, body.path)) is not None:
                    await run_in_threadpool(paths.readable_file, caller, conf, "Ceph configuration")
            else:
                await run_in_threadpool(paths.folder, caller, body.path, "storage pool folder")
            # Probing a (possibly NFS) folder may block: not on the event loop.
            made = await run_in_threadpool(pools.create_storage, body.name, body.type, body.path)
            return made.to_dict()
        return pools.create_address(body.name, body.subnet, body.gateway, body.first, body.last).to_dict()

    @router.get("/api/v1/pools/{kind}/{name}")
    async def get_pool(caller: Caller, kind: PoolKind, name: str) -> dict[str, Any]:
        if kind == "compute":
            return pools.compute_pool(name).to_dict()
        if kind == "storage":
            return (await run_in_threadpool(pools.storage_pool, name)).to_dict()
        return {**pools.address_pool(name).to_dict(),
                "leases": [lease.to_dict() for lease in pools.leases(name, seen=seen(caller))]}

    @router.delete("/api/v1/pools/{kind}/{name}", status_code=204)
    def delete_pool(kind: PoolKind, name: str) -> Response:
        {"compute": pools.delete_compute, "storage": pools.delete_storage,
         "address": pools.delete_address}[kind](name)
        return Response(status_code=204)

    @router.get("/api/v1/pools/address/{name}/leases")
    def list_leases(caller: Caller, name: str) -> list[dict[str, Any]]:
        return [lease.to_dict() for lease in pools.leases(name, seen=seen(caller))]

    @router.post("/api/v1/pools/address/{name}/leases", status_code=201)
    def allocate(name: str, body: LeaseIn) -> dict[str, Any]:
        return pools.allocate(name, body.owner).to_dict()

    @router.delete("/api/v1/pools/address/{name}/leases/{address}", status_code=204)
    def release(name: str, address: str) -> Response:
        pools.release(name, address)
        return Response(status_code=204)

    return router


def networks_router(appliance: Appliance) -> APIRouter:
    networks = appliance.vms.networks
    router = APIRouter(tags=["networks"], responses=raises(PoolError, NotFoundError, ConflictError, VMError))
    seen = visibility(appliance).seen

    @router.get("/api/v1/networks")
    def list_networks() -> list[dict[str, Any]]:
        return [networks.status(n.name) for n in networks.list()]

    @router.post("/api/v1/networks", status_code=201)
    async def create_network(body: NetworkIn) -> dict[str, Any]:
        made = await run_in_threadpool(networks.create, body.name, body.address_pool, body.bridge,
                                       body.netns)
        return networks.status(made.name)

    @router.get("/api/v1/networks/{name}")
    def get_network(caller: Caller, name: str) -> dict[str, Any]:
        return {**networks.status(name),
                "attachments": [a.to_dict() for a in networks.attachments(name, seen=seen(caller))]}

    @router.delete("/api/v1/networks/{name}", status_code=204)
    async def delete_network(name: str) -> Response:
        await run_in_threadpool(networks.delete, name)
        return Response(status_code=204)

    @router.get("/api/v1/networks/{name}/attachments")
    def list_attachments(caller: Caller, name: str) -> list[dict[str, Any]]:
        return [a.to_dict() for a in networks.attachments(name, seen=seen(caller))]

    @router.post("/api/v1/networks/{name}/attachments", status_code=201)
    async def attach(name: str, body: AttachIn) -> dict[str, Any]:
        return (await run_in_threadpool(networks.attach, name, body.vm)).to_dict()

    @router.delete("/api/v1/networks/{name}/attachments/{vm}")
    async def detach(name: str, vm: str) -> list[dict[str, Any]]:
        return [a.to_dict() for a in await run_in_threadpool(networks.detach, name, vm)]

    return router


def network_router(appliance: Appliance) -> APIRouter:
    """Both routers, for one include line in api.py."""
    router = APIRouter()
    router.include_router(pools_router(appliance.vms.pools, appliance.host_paths, visibility(appliance).seen))
    router.include_router(networks_router(appliance))
    return router
