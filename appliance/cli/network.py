"""`cairn network ...` and `cairn pool ...`: VM networks (bridge + address pool + dnsmasq) and
compute, storage and address pools."""
from __future__ import annotations

from typing import Any

import typer

from .common import JsonOpt, emit_json, out, print_table, reports_errors, state, table

network_app = typer.Typer(help="VM networks: a Linux bridge, an address pool and dnsmasq.",
                          no_args_is_help=True)
pool_app = typer.Typer(help="Compute pools (hosts), storage pools (folders for VM disks) and "
                            "address pools (IPs handed out once each).", no_args_is_help=True)
pool_create_app = typer.Typer(help="Define a pool.", no_args_is_help=True)
pool_app.add_typer(pool_create_app, name="create")
HOST_OPT = typer.Option(..., "--host", help="A host of the pool (`local` is this one; repeat).")
KINDS = ("compute", "storage", "address")


def _table(title: str, columns: list[str], rows: list[dict[str, Any]], wide: tuple[str, ...] = ()) -> None:
    listing = table(*columns, wide=wide)
    listing.title = title
    for row in rows:
        listing.add_row(*("" if row.get(c) is None else str(row[c]) for c in columns))
    print_table(listing)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"pool kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


# -- pools --------------------------------------------------------------------------------------

@pool_app.command("list")
@reports_errors
def pool_list(kind: str | None = typer.Option(None, "--kind", help="compute, storage or address."),
              as_json: bool = JsonOpt) -> None:
    """List pools, all kinds or one."""
    if kind is not None:
        _check_kind(kind)
    pools = state.appliance.vms.pools
    found: list[Any] = []
    for k, listing in (("compute", pools.compute_pools), ("storage", pools.storage_pools),
                       ("address", pools.address_pools)):
        if kind in (None, k):
            found += listing()
    rows = [p.to_dict() for p in found]
    if as_json:
        emit_json(rows)
    else:
        for row in rows:
            row["details"] = {"compute": lambda r: ", ".join(r["hosts"]),
                              "storage": lambda r: f"{r['type']} {r['path']}",
                              "address": lambda r: f"{r['subnet']} {r['first']}-{r['last']} "
                                                   f"gateway {r['gateway']}"}[row["kind"]](row)
        _table("pools", ["kind", "name", "details"], rows, wide=("details",))


@pool_create_app.command("compute")
@reports_errors
def pool_create_compute(name: str, host: list[str] = HOST_OPT) -> None:
    """A compute pool: the hosts placement may choose from."""
    pool = state.appliance.vms.pools.create_compute(name, host)
    out.print(f"compute pool {pool.name}: {', '.join(sorted(pool.hosts))}")


@pool_create_app.command("storage")
@reports_errors
def pool_create_storage(name: str, path: str,
                        nfs: bool = typer.Option(False, "--nfs", help="PATH is the mount point of an NFS export.")) -> None:
    """A storage pool: an existing, writable folder VM disks can be created in, or a Ceph pool
    (PATH rbd:POOL\\[/NAMESPACE]\\[:conf=PATH]\\[:id=USER]) where each disk is a thin RBD image."""
    kind = "rbd" if path.startswith("rbd:") else "nfs" if nfs else "dir"
    pool = state.appliance.vms.pools.create_storage(name, kind, path)
    out.print(f"storage pool {pool.name}: {pool.kind} {pool.location}")


@pool_create_app.command("address")
@reports_errors
def pool_create_address(name: str, subnet: str,
                        gateway: str | None = typer.Option(None, help="Default: the first host address."),
                        first: str | None = typer.Option(None, help="First address handed out."),
                        last: str | None = typer.Option(None, help="Last address handed out.")) -> None:
    """An address pool: IPv4 addresses of SUBNET (e.g. 10.77.0.0/24), handed out once each."""
    pool = state.appliance.vms.pools.create_address(name, subnet, gateway, first, last)
    out.print(f"address pool {pool.name}: {pool.subnet}, {pool.first}-{pool.last} "
              f"({pool.size()} addresses), gateway {pool.gateway}")


@pool_app.command("delete")
@reports_errors
def pool_delete(kind: str, name: str) -> None:
    """Delete a pool (refused while in use; a storage pool's files stay)."""
    pools = state.appliance.vms.pools
    {"compute": pools.delete_compute, "storage": pools.delete_storage,
     "address": pools.delete_address}[_check_kind(kind)](name)
    out.print(f"{kind} pool {name} deleted")


@pool_app.command("leases")
@reports_errors
def pool_leases(name: str, as_json: bool = JsonOpt) -> None:
    """The addresses an address pool has handed out."""
    rows = [lease.to_dict() for lease in state.appliance.vms.pools.leases(name)]
    if as_json:
        emit_json(rows)
    else:
        _table(f"leases of {name}", ["address", "owner", "nic", "mac"], rows)


@pool_app.command("allocate")
@reports_errors
def pool_allocate(name: str, owner: str = typer.Option(..., "--owner", help="Who holds the address.")) -> None:
    """Hand out the pool's lowest free address."""
    out.print(str(state.appliance.vms.pools.allocate(name, owner).address))


@pool_app.command("release")
@reports_errors
def pool_release(name: str, address: str) -> None:
    """Give an address back to its pool."""
    lease = state.appliance.vms.pools.release(name, address)
    out.print(f"released {lease.address} (was {lease.owner}'s)")


# -- networks -----------------------------------------------------------------------------------

@network_app.command("list")
@reports_errors
def network_list(as_json: bool = JsonOpt) -> None:
    """List networks, with their bridge and DHCP server."""
    networks = state.appliance.vms.networks
    rows = [networks.status(n.name) for n in networks.list()]
    if as_json:
        emit_json(rows)
    else:
        _table("networks", ["name", "bridge", "netns", "address_pool", "subnet", "gateway", "dhcp_pid"], rows)


@network_app.command("create")
@reports_errors
def network_create(name: str,
                   pool: str = typer.Option(..., "--pool", help="Its address pool."),
                   bridge: str | None = typer.Option(None, help="Bridge to create (default cbr-NAME)."),
                   netns: str | None = typer.Option(None, help="An existing network namespace for "
                                                                  "the bridge and dnsmasq.")) -> None:
    """Create the bridge (holding the pool's gateway address) and start its DHCP server."""
    network = state.appliance.vms.networks.create(name, pool, bridge, netns)
    where = f" in namespace {network.netns}" if network.netns else ""
    out.print(f"network {network.name}: bridge {network.bridge}{where}, {network.pool.subnet}")


@network_app.command("show")
@reports_errors
def network_show(name: str, as_json: bool = JsonOpt) -> None:
    """A network and the VMs attached to it, with their addresses."""
    networks = state.appliance.vms.networks
    data = {**networks.status(name), "attachments": [a.to_dict() for a in networks.attachments(name)]}
    if as_json:
        emit_json(data)
    else:
        for key, value in data.items():
            if key != "attachments":
                out.print(f"{key}: {value}")
        _table("attached VMs", ["vm", "nic", "mac", "address", "tap"], data["attachments"])


@network_app.command("delete")
@reports_errors
def network_delete(name: str) -> None:
    """Stop its DHCP server and remove its bridge (refused while VMs are attached)."""
    state.appliance.vms.networks.delete(name)
    out.print(f"network {name} deleted")


@network_app.command("attach")
@reports_errors
def network_attach(name: str, vm: str) -> None:
    """Give the (stopped) VM a NIC on the network, with an address reserved for it."""
    a = state.appliance.vms.networks.attach(name, vm)
    out.print(f"{a.vm} {a.nic} ({a.mac}) on {a.network}: {a.address}")


@network_app.command("detach")
@reports_errors
def network_detach(name: str, vm: str) -> None:
    """Remove the (stopped) VM's NICs on the network and release their addresses."""
    for a in state.appliance.vms.networks.detach(name, vm):
        out.print(f"{a.vm} {a.nic} detached from {a.network}, {a.address} released")
