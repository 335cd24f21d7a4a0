"""VM networks: a Linux bridge + an address pool + dnsmasq handing out the pool's addresses.

Attaching a VM (stopped) gives it a NIC whose tap is named after the VM and NIC, and leases it
the pool's lowest free address for that NIC's MAC, in one transaction. dnsmasq knows only those
reserved MAC -> IP pairs, so a VM always gets its own address and never another's. Every start
of the VM runs inside starting(): fresh taps before QEMU runs, bridged after; deleting or
detaching a VM releases its addresses.

The bridge lives in the host's network namespace, or in a named one (`netns`) that already
exists: tests build their networks there so the host's interfaces are never touched.
"""
from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from appliance.access.seen import ALL, Seen
from appliance.errors import ConflictError, NotFoundError
from appliance.settings import Settings
from appliance.vms.records import VMRecord
from vmm import QemuDriver, VMSpec
from vmm.dhcp import DhcpConfig, DhcpServer, StaticHost
from vmm.network import (
    Netns,
    check_ifname,
    check_netns,
    create_bridge,
    delete_link,
    link_exists,
    netns_exists,
    plug_tap,
    prepare_tap,
    remove_tap,
    tap_name,
)
from vmm.spec import NicSpec

from .records import AddressLeaseRecord, NetworkRecord
from .service import ALLOCATE_ATTEMPTS, AddressPool, PoolError, PoolService, check_name

ACTIVE = ("running", "paused")
MAX_NICS = 100   # NicSpec names are net0 ... net99


@dataclass(frozen=True)
class Network:
    name: str
    bridge: str
    pool: AddressPool
    netns: str | None = None

    @property
    def ns(self) -> Netns:
        return Netns(self.netns)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bridge": self.bridge, "netns": self.netns,
                "address_pool": self.pool.name, "subnet": str(self.pool.subnet),
                "gateway": str(self.pool.gateway)}


@dataclass(frozen=True)
class Attachment:
    """A VM's NIC on a network, with its reserved address."""
    network: str
    vm: str
    nic: str
    mac: str
    address: str
    tap: str

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "vm": self.vm, "nic": self.nic, "mac": self.mac,
                "address": self.address, "tap": self.tap}


class NetworkService:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], pools: PoolService,
                 driver: QemuDriver):
        self.settings = settings
        self.catalog = catalog
        self.pools = pools
        self.driver = driver

    # -- definitions --------------------------------------------------------------------------

    def create(self, name: str, address_pool: str, bridge: str | None = None,
               netns: str | None = None) -> Network:
        """Define the network, make its bridge (holding the pool's gateway address) and start
        its dnsmasq; nothing is left behind if any of it fails."""
        check_name("network", name)
        bridge = check_ifname("bridge name", bridge or f"cbr-{name}"[:15])
        if netns is not None and not netns_exists(check_netns(netns)):
            raise NotFoundError(f"network {name}: no network namespace {netns} (ip netns add {netns})")
        pool = self.pools.address_pool(address_pool)
        network = Network(name, bridge, pool, netns)
        with self.catalog() as s:
            self._check_new(s, network)
        if link_exists(network.ns, bridge):
            raise ConflictError(f"network {name}: an interface {bridge} exists already"
                                + (f" in namespace {netns}" if netns else ""))
        create_bridge(network.ns, bridge, IPv4Interface(f"{pool.gateway}/{pool.subnet.prefixlen}"))
        try:
            with self.catalog.begin() as s:
                self._check_new(s, network)  # again: a concurrent create may have won meanwhile
                s.add(NetworkRecord(name=name, bridge=bridge, address_pool=pool.name, netns=netns))
        except BaseException:
            delete_link(network.ns, bridge)
            raise
        try:
            self._restart_dhcp(network)
        except BaseException:
            self._dhcp(network).stop()
            with self.catalog.begin() as s:
                s.delete(s.get(NetworkRecord, name))
            delete_link(network.ns, bridge)
            raise
        return network

    def _check_new(self, s: Session, network: Network) -> None:
        if s.get(NetworkRecord, network.name) is not None:
            raise ConflictError(f"network {network.name} already exists")
        for other in s.scalars(select(NetworkRecord)):
            if other.bridge == network.bridge:
                raise ConflictError(f"network {other.name} already uses bridge {network.bridge}")
            if other.address_pool == network.pool.name:
                raise ConflictError(f"address pool {network.pool.name} is already the pool of "
                                    f"network {other.name}")

    def get(self, name: str) -> Network:
        with self.catalog() as s:
            if (row := s.get(NetworkRecord, name)) is None:
                raise NotFoundError(f"no network named {name}")
            return Network(row.name, row.bridge, self.pools.address_pool(row.address_pool), row.netns)

    def delete(self, name: str) -> None:
        """Stop its dnsmasq and remove its bridge; refused while VMs are attached."""
        network = self.get(name)
        if vms := sorted({a.vm for a in self.attachments(name)}):
            raise ConflictError(f"network {name} has VMs attached: {', '.join(vms)}; detach them first")
        self._dhcp(network).stop()
        if link_exists(network.ns, network.bridge):
            delete_link(network.ns, network.bridge)
        with self.catalog.begin() as s:
            s.delete(s.get(NetworkRecord, name))

    def status(self, name: str) -> dict[str, Any]:
        network = self.get(name)
        return {**network.to_dict(), "bridge_present": link_exists(network.ns, network.bridge),
                "dhcp_pid": self._dhcp(network).pid()}

    # -- attachments --------------------------------------------------------------------------

    def attachments(self, network: str | None = None, vm: str | None = None, seen: Seen = ALL) -> list[Attachment]:
        """The VMs' NICs on the network (or every network), those of VMs `seen` hides left out."""
        with self.catalog() as s:
            pools = {r.address_pool: r.name for r in s.scalars(select(NetworkRecord))
                     if network in (None, r.name)}
        if network is not None and not pools:
            raise NotFoundError(f"no network named {network}")
        return [Attachment(pools[lease.pool], lease.owner, lease.nic, lease.mac or "",
                           str(lease.address), tap_name(lease.owner, lease.nic))
                for lease in self.pools.leases(owner=vm, seen=seen)
                if lease.pool in pools and lease.nic is not None]

    def attach(self, name: str, vm: str, mac: str | None = None, model: str | None = None) -> Attachment:
        """A new NIC for the stopped VM `vm` on the network, with the pool's next free address
        reserved for its MAC (`mac`, default a random one); effective at the VM's next start.
        `model`: its emulated card (vmm.spec.NIC_MODELS), default the VM's OS profile's."""
        network = self.get(name)
        self._require_stopped(vm, "attach it to a network")
        for _ in range(ALLOCATE_ATTEMPTS):
            try:
                with self.catalog.begin() as s:
                    attachment = self._attach(s, network, vm, mac, model)
                break
            except IntegrityError:
                continue  # another attach took that address: pick again
        else:
            raise ConflictError(f"network {name}: too many concurrent attachments, try again")
        self._restart_dhcp(network)
        return attachment

    def _attach(self, s: Session, network: Network, vm: str, mac: str | None, model: str | None) -> Attachment:
        row = s.get(VMRecord, vm)
        if row is None:
            raise NotFoundError(f"no VM named {vm}")
        spec = VMSpec.from_dict(row.spec)
        used = {n.name for n in spec.nics}
        nic_name = next((f"net{i}" for i in range(MAX_NICS) if f"net{i}" not in used), None)
        if nic_name is None:
            raise PoolError(f"VM {vm} has {MAX_NICS} NICs already")
        nic = NicSpec(nic_name, mode="tap", tap=tap_name(vm, nic_name), model=model)
        if mac is not None:
            nic.mac = mac
        spec.nics.append(nic)
        spec.validate()
        lease = self.pools.allocate(network.pool.name, vm, nic=nic.name, mac=nic.mac, session=s)
        row.spec = spec.to_dict()
        return Attachment(network.name, vm, nic.name, nic.mac, str(lease.address), nic.tap or "")

    def detach(self, name: str, vm: str) -> list[Attachment]:
        """Remove the stopped VM's NICs on the network and release their addresses."""
        network = self.get(name)
        self._require_stopped(vm, "detach it from a network")
        mine = self.attachments(name, vm)
        if not mine:
            raise NotFoundError(f"VM {vm} is not attached to network {name}")
        with self.catalog.begin() as s:
            row = s.get(VMRecord, vm)
            if row is None:
                raise NotFoundError(f"no VM named {vm}")
            spec = VMSpec.from_dict(row.spec)
            spec.drop_nics({a.nic for a in mine})
            row.spec = spec.to_dict()
            self._delete_leases(s, network.pool.name, vm)
        for a in mine:
            remove_tap(a.tap, network.ns)
        self._restart_dhcp(network)
        return mine

    def detach_nic(self, vm: str, nic: str) -> Attachment:
        """Remove one NIC of the stopped VM that is on a network, and release its address."""
        mine = next((a for a in self.attachments(vm=vm) if a.nic == nic), None)
        if mine is None:
            raise NotFoundError(f"NIC {nic} of VM {vm} is on no network")
        network = self.get(mine.network)
        self._require_stopped(vm, "remove its NIC")
        with self.catalog.begin() as s:
            row = s.get_one(VMRecord, vm)
            spec = VMSpec.from_dict(row.spec)
            spec.drop_nics({nic})
            row.spec = spec.to_dict()
            for lease in s.scalars(select(AddressLeaseRecord).where(AddressLeaseRecord.pool == network.pool.name,
                                                                    AddressLeaseRecord.owner == vm,
                                                                    AddressLeaseRecord.nic == nic)):
                s.delete(lease)
        remove_tap(mine.tap, network.ns)
        self._restart_dhcp(network)
        return mine

    def adopt_clone(self, s: Session, source: str, clone: VMSpec) -> None:
        """In the clone's own transaction: its copies of the source's network NICs get their own
        taps and addresses (clone_spec gave them new MACs but kept the source's tap names)."""
        networks = {a.nic: a.network for a in self.attachments(vm=source)}
        for nic in clone.nics:
            if nic.name in networks:
                nic.tap = tap_name(clone.name, nic.name)
                pool = self.get(networks[nic.name]).pool.name
                self.pools.allocate(pool, clone.name, nic=nic.name, mac=nic.mac, session=s)

    def refresh(self, vm: str) -> None:
        """dnsmasq of each network the VM is on learns its current reservations."""
        for name in sorted({a.network for a in self.attachments(vm=vm)}):
            self._restart_dhcp(self.get(name))

    def release_vm(self, vm: str) -> None:
        """The VM is being deleted: release its addresses and remove its taps."""
        by_network: dict[str, list[Attachment]] = {}
        for a in self.attachments(vm=vm):
            by_network.setdefault(a.network, []).append(a)
        for name, mine in by_network.items():
            network = self.get(name)
            with self.catalog.begin() as s:
                self._delete_leases(s, network.pool.name, vm)
            for a in mine:
                remove_tap(a.tap, network.ns)
            self._restart_dhcp(network)

    @staticmethod
    def _delete_leases(s: Session, pool: str, vm: str) -> None:
        for row in s.scalars(select(AddressLeaseRecord).where(AddressLeaseRecord.pool == pool,
                                                              AddressLeaseRecord.owner == vm,
                                                              AddressLeaseRecord.nic.is_not(None))):
            s.delete(row)

    # -- VM start -----------------------------------------------------------------------------

    @contextmanager
    def starting(self, spec: VMSpec) -> Iterator[None]:
        """Around QEMU's start: before it, a fresh tap for each of the VM's network NICs and the
        networks up (bridge and dnsmasq come back after a host reboot); after it, the taps QEMU
        holds bridged; if QEMU did not start, the taps removed again. A running VM is left
        alone: its start is refused anyway, and its taps are in use."""
        mine = [] if self.driver.status(spec.name).state in ACTIVE else self._mine(spec)
        for attachment, network in mine:
            self._ensure_up(network)
            prepare_tap(attachment.tap, network.ns)
        try:
            yield
        except BaseException:
            for attachment, network in mine:
                remove_tap(attachment.tap, network.ns)
            raise
        for attachment, network in mine:
            plug_tap(attachment.tap, network.bridge, network.ns)

    def _mine(self, spec: VMSpec) -> list[tuple[Attachment, Network]]:
        taps = {n.tap for n in spec.nics if n.mode == "tap"}
        return [(a, self.get(a.network)) for a in self.attachments(vm=spec.name) if a.tap in taps]

    def _ensure_up(self, network: Network) -> None:
        if not link_exists(network.ns, network.bridge):
            pool = network.pool
            create_bridge(network.ns, network.bridge,
                          IPv4Interface(f"{pool.gateway}/{pool.subnet.prefixlen}"))
        if self._dhcp(network).pid() is None:
            self._restart_dhcp(network)

    # -- dnsmasq ------------------------------------------------------------------------------

    def _folder(self, network: Network) -> Path:
        return self.settings.data_dir / "networks" / network.name

    def _dhcp(self, network: Network) -> DhcpServer:
        config = DhcpConfig(network.bridge, network.pool.subnet, network.ns, network.pool.gateway)
        return DhcpServer(self._folder(network), config)

    def _restart_dhcp(self, network: Network) -> None:
        """dnsmasq with the network's current reservations (see vmm/dhcp.py for why a restart)."""
        with self._lock(network):
            # Read under the lock: a restart must never apply reservations older than another's.
            hosts = [StaticHost(a.mac, IPv4Address(a.address), f"{a.vm}-{a.nic}".replace("_", "-"))
                     for a in self.attachments(network.name)]
            self._dhcp(network).restart(hosts)

    @contextmanager
    def _lock(self, network: Network) -> Iterator[None]:
        # The CLI and the server may both restart one network's dnsmasq; only one at a time.
        folder = self._folder(network)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _require_stopped(self, vm: str, doing: str) -> None:
        state = self.driver.status(vm).state
        if state in ACTIVE:
            raise ConflictError(f"VM {vm} is {state}; stop it to {doing}")

    # Last in the class: the name would shadow the built-in `list` in the annotations after it.
    def list(self) -> list[Network]:
        with self.catalog() as s:
            names = list(s.scalars(select(NetworkRecord.name).order_by(NetworkRecord.name)))
        return [self.get(n) for n in names]
