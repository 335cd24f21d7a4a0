"""Pools and VM networks over the API: /api/v1/pools (compute, storage, address pools and an
address pool's leases) and /api/v1/networks (bridge + address pool + dnsmasq, VM attachments).

Errors answer like the rest of the API: a bad definition 400 (or 422 when the body does not
parse), something missing 404, something in the way (in use, exists, exhausted) 409; a failing
`ip` or dnsmasq is vmm's NetworkError, answered 400 with its own words.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from appliance.access.visibility import visibility
from appliance.errors import ConflictError, NotFoundError
from appliance.pools.service import PoolError, rbd_conf
from vmm import VMError

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep

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


# A bad definition, what is not there or in the way, and `ip` or dnsmasq refusing.
pool_routes = APIRouter(tags=["pools"], responses=raises(PoolError, NotFoundError, ConflictError, VMError))


@pool_routes.get("/api/v1/pools")
def list_pools(appliance: ApplianceDep, kind: Annotated[PoolKind | None, Query()] = None) -> list[dict[str, Any]]:
    pools = appliance.vms.pools
    listed: list[Any] = []
    if kind in (None, "compute"):
        listed += pools.compute_pools()
    if kind in (None, "storage"):
        listed += pools.storage_pools()
    if kind in (None, "address"):
        listed += pools.address_pools()
    return [p.to_dict() for p in listed]


@pool_routes.post("/api/v1/pools", status_code=201)
async def create_pool(appliance: ApplianceDep, caller: Caller, body: PoolIn) -> dict[str, Any]:
    pools, paths = appliance.vms.pools, appliance.host_paths
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


@pool_routes.get("/api/v1/pools/{kind}/{name}")
async def get_pool(appliance: ApplianceDep, caller: Caller, kind: PoolKind, name: str) -> dict[str, Any]:
    pools = appliance.vms.pools
    if kind == "compute":
        return pools.compute_pool(name).to_dict()
    if kind == "storage":
        return (await run_in_threadpool(pools.storage_pool, name)).to_dict()
    return {**pools.address_pool(name).to_dict(), "leases": list_leases(appliance, caller, name)}


@pool_routes.delete("/api/v1/pools/{kind}/{name}", status_code=204)
def delete_pool(appliance: ApplianceDep, kind: PoolKind, name: str) -> Response:
    pools = appliance.vms.pools
    {"compute": pools.delete_compute, "storage": pools.delete_storage, "address": pools.delete_address}[kind](name)
    return Response(status_code=204)


@pool_routes.get("/api/v1/pools/address/{name}/leases")
def list_leases(appliance: ApplianceDep, caller: Caller, name: str) -> list[dict[str, Any]]:
    return [lease.to_dict() for lease in appliance.vms.pools.leases(name, seen=visibility(appliance).seen(caller))]


@pool_routes.post("/api/v1/pools/address/{name}/leases", status_code=201)
def allocate(appliance: ApplianceDep, name: str, body: LeaseIn) -> dict[str, Any]:
    return appliance.vms.pools.allocate(name, body.owner).to_dict()


@pool_routes.delete("/api/v1/pools/address/{name}/leases/{address}", status_code=204)
def release(appliance: ApplianceDep, name: str, address: str) -> Response:
    appliance.vms.pools.release(name, address)
    return Response(status_code=204)


network_routes = APIRouter(tags=["networks"], responses=raises(PoolError, NotFoundError, ConflictError, VMError))


@network_routes.get("/api/v1/networks")
def list_networks(appliance: ApplianceDep) -> list[dict[str, Any]]:
    networks = appliance.vms.networks
    return [networks.status(n.name) for n in networks.list()]


@network_routes.post("/api/v1/networks", status_code=201)
async def create_network(appliance: ApplianceDep, body: NetworkIn) -> dict[str, Any]:
    networks = appliance.vms.networks
    made = await run_in_threadpool(networks.create, body.name, body.address_pool, body.bridge, body.netns)
    return networks.status(made.name)


@network_routes.get("/api/v1/networks/{name}")
def get_network(appliance: ApplianceDep, caller: Caller, name: str) -> dict[str, Any]:
    return {**appliance.vms.networks.status(name), "attachments": list_attachments(appliance, caller, name)}


@network_routes.delete("/api/v1/networks/{name}", status_code=204)
async def delete_network(appliance: ApplianceDep, name: str) -> Response:
    await run_in_threadpool(appliance.vms.networks.delete, name)
    return Response(status_code=204)


@network_routes.get("/api/v1/networks/{name}/attachments")
def list_attachments(appliance: ApplianceDep, caller: Caller, name: str) -> list[dict[str, Any]]:
    seen = visibility(appliance).seen(caller)
    return [a.to_dict() for a in appliance.vms.networks.attachments(name, seen=seen)]


@network_routes.post("/api/v1/networks/{name}/attachments", status_code=201)
async def attach(appliance: ApplianceDep, name: str, body: AttachIn) -> dict[str, Any]:
    return (await run_in_threadpool(appliance.vms.networks.attach, name, body.vm)).to_dict()


@network_routes.delete("/api/v1/networks/{name}/attachments/{vm}")
async def detach(appliance: ApplianceDep, name: str, vm: str) -> list[dict[str, Any]]:
    return [a.to_dict() for a in await run_in_threadpool(appliance.vms.networks.detach, name, vm)]


# Both, for one include line in create_app.
router = APIRouter()
router.include_router(pool_routes)
router.include_router(network_routes)
