"""Pools (Nano's): compute pools of hosts, storage pools for VM disks, address pools of IPs.

- A compute pool names the hosts placement may choose from (vmm.placement.place takes any
  list of hosts; ComputePool.filter narrows it).
- A storage pool is where VM disks are created: a folder (a local directory or a mounted NFS
  export) or a Ceph pool (kind rbd: each disk a thin raw RBD image <vm>-<disk>, which the VM's
  QEMU opens with its rbd driver). It is checked when it is defined and again whenever a VM's
  disks go into it, so an export that was unmounted since, or a cluster that does not answer,
  is refused before anything is created.
- An address pool hands out IPv4 addresses, each at most once: a lease is a catalog row keyed
  by (pool, address), so two allocations racing for an address cannot both commit.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from appliance.access.seen import ALL, Seen
from appliance.errors import CairnError, ConflictError, NotFoundError
from appliance.hosts.records import HostRecord
from appliance.names import VM_LIKE
from appliance.vms.records import VMRecord
from vmm.errors import ImageError, VMSpecError
from vmm.network_disks import RbdDisk, RbdPool, is_network, network_disk
from vmm.placement import LOCAL_HOST, Host
from vmm.spec import VMSpec

from .records import AddressLeaseRecord, AddressPoolRecord, ComputePoolRecord, NetworkRecord, StoragePoolRecord

StorageKind = Literal["dir", "nfs", "rbd"]
STORAGE_KINDS: tuple[StorageKind, ...] = ("dir", "nfs", "rbd")
NFS_FSTYPES = ("nfs", "nfs4")
# Allocation retries when another writer took the address between our read and our insert.
ALLOCATE_ATTEMPTS = 20


class PoolError(CairnError):
    """A pool definition or request that cannot be honoured as given (HTTP 400)."""


def check_name(what: str, name: str) -> str:
    return VM_LIKE.check(what, name, PoolError)


@dataclass(frozen=True)
class ComputePool:
    name: str
    hosts: frozenset[str]

    def filter(self, hosts: Iterable[Host]) -> list[Host]:
        return [h for h in hosts if h.name in self.hosts]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "compute", "name": self.name, "hosts": sorted(self.hosts)}


@dataclass(frozen=True)
class StoragePool:
    """`location`: the folder of a dir or nfs pool; rbd:POOL[/NAMESPACE][:conf=PATH][:id=USER] of an rbd pool."""
    name: str
    kind: StorageKind
    location: str

    @property
    def path(self) -> Path:
        """The folder disks are created in (dir and nfs pools)."""
        if self.kind == "rbd":
            raise PoolError(f"storage pool {self.name} is a Ceph pool, not a folder")
        return Path(self.location)

    @property
    def rbd(self) -> RbdPool:
        """The Ceph pool disks are created in (rbd pools)."""
        if self.kind != "rbd":
            raise PoolError(f"storage pool {self.name} is a folder, not a Ceph pool")
        return RbdPool.parse(self.location)

    def vm_folder(self, vm: str) -> Path | None:
        return None if self.kind == "rbd" else self.path / vm

    def holds(self, disk_path: str) -> bool:
        if self.kind == "rbd":
            return (remote := network_disk(disk_path)) is not None and self.rbd.holds(remote)
        return not is_network(disk_path) and Path(disk_path).is_relative_to(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "storage", "name": self.name, "type": self.kind, "path": self.location}


@dataclass(frozen=True)
class AddressPool:
    name: str
    subnet: IPv4Network
    gateway: IPv4Address
    first: IPv4Address
    last: IPv4Address

    def candidates(self) -> Iterator[IPv4Address]:
        for value in range(int(self.first), int(self.last) + 1):
            if (address := IPv4Address(value)) != self.gateway:
                yield address

    def size(self) -> int:
        return int(self.last) - int(self.first) + 1 - int(self.first <= self.gateway <= self.last)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "address", "name": self.name, "subnet": str(self.subnet),
                "gateway": str(self.gateway), "first": str(self.first), "last": str(self.last),
                "size": self.size()}


@dataclass(frozen=True)
class Lease:
    pool: str
    address: IPv4Address
    owner: str
    nic: str | None = None
    mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "address": str(self.address), "owner": self.owner,
                "nic": self.nic, "mac": self.mac}


def address_pool_from(name: str, subnet: str, gateway: str | None = None,
                      first: str | None = None, last: str | None = None) -> AddressPool:
    """A validated address pool; gateway defaults to the subnet's first host, the range to
    every other host of the subnet."""
    check_name("address pool", name)
    try:
        net = IPv4Network(subnet, strict=True)
        hosts = (net.network_address + 1, net.broadcast_address - 1)
        gw = IPv4Address(gateway) if gateway else hosts[0]
        lo = IPv4Address(first) if first else gw + 1 if gw == hosts[0] else hosts[0]
        hi = IPv4Address(last) if last else hosts[1]
    except (AddressValueError, NetmaskValueError, ValueError) as e:
        raise PoolError(f"address pool {name}: {e}") from None
    if net.prefixlen > 30:
        raise PoolError(f"address pool {name}: {net} is too small (at most /30)")
    for what, address in (("gateway", gw), ("first", lo), ("last", hi)):
        if not hosts[0] <= address <= hosts[1]:
            raise PoolError(f"address pool {name}: {what} {address} is not a host address of {net}")
    if lo > hi:
        raise PoolError(f"address pool {name}: first {lo} is after last {hi}")
    pool = AddressPool(name, net, gw, lo, hi)
    if pool.size() < 1:
        raise PoolError(f"address pool {name}: {lo}-{hi} holds no address besides the gateway")
    return pool


def mount_of(path: Path) -> tuple[str, str] | None:
    """(mount point, filesystem type) if `path` is itself a mount point, from mountinfo."""
    real = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            # The mount point is field 5 (octal escapes for spaces); fstype follows " - ".
            point = fields[4].encode().decode("unicode_escape")
            fstype = fields[fields.index("-") + 1]
            if point == real:
                found = (point, fstype)  # the last one listed is the one on top
    return found


def check_storage(name: str, kind: str, path: str | Path) -> StoragePool:
    """A storage pool usable now: a folder that is absolute, a directory, writable, and for NFS
    a mounted NFS export; a Ceph pool that answers."""
    check_name("storage pool", name)
    if kind not in STORAGE_KINDS:
        raise PoolError(f"storage pool {name}: type {kind!r} is not one of {', '.join(STORAGE_KINDS)}")
    if kind == "rbd":
        return _check_rbd(name, str(path))
    folder = Path(path)
    if not folder.is_absolute():
        raise PoolError(f"storage pool {name}: path {str(path)!r} must be absolute")
    if not folder.is_dir():
        raise PoolError(f"storage pool {name}: {folder} is not an existing directory")
    if kind == "nfs":
        mount = mount_of(folder)
        if mount is None:
            raise PoolError(f"storage pool {name}: {folder} is not a mount point; mount the NFS "
                            "export there first")
        if mount[1] not in NFS_FSTYPES:
            raise PoolError(f"storage pool {name}: {folder} is a {mount[1]} mount, not NFS")
    try:
        # What counts is whether a file can be made there (read-only mounts, root squash).
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".cairn-probe-"):
            pass
    except OSError as e:
        raise PoolError(f"storage pool {name}: cannot write in {folder}: {e.strerror}") from None
    return StoragePool(name, kind, str(folder))


def rbd_conf(name: str, location: str) -> str | None:
    """The Ceph configuration file an rbd pool's location names, if any (PoolError if malformed)."""
    try:
        return RbdPool.parse(location).conf
    except VMSpecError as e:
        raise PoolError(f"storage pool {name}: {e}") from None


def _check_rbd(name: str, location: str) -> StoragePool:
    try:
        pool = RbdPool.parse(location)
        if pool.conf and not Path(pool.conf).is_absolute():
            raise PoolError(f"storage pool {name}: conf {pool.conf!r} must be an absolute path")
        if pool.conf and not Path(pool.conf).is_file():
            raise PoolError(f"storage pool {name}: Ceph configuration {pool.conf} does not exist")
        pool.check()
    except (VMSpecError, ImageError) as e:
        raise PoolError(f"storage pool {name}: {e}") from None
    return StoragePool(name, "rbd", pool.location)


class PoolService:
    def __init__(self, catalog: sessionmaker[Session]):
        self.catalog = catalog

    # -- compute ------------------------------------------------------------------------------

    def known_hosts(self) -> set[str]:
        with self.catalog() as s:
            return {LOCAL_HOST, *s.scalars(select(HostRecord.name))}

    def create_compute(self, name: str, hosts: Iterable[str]) -> ComputePool:
        check_name("compute pool", name)
        chosen = frozenset(hosts)
        if not chosen:
            raise PoolError(f"compute pool {name}: name at least one host")
        if unknown := chosen - self.known_hosts():
            raise NotFoundError(f"compute pool {name}: no hosts named {', '.join(sorted(unknown))}")
        with self.catalog.begin() as s:
            self._require_new(s, ComputePoolRecord, "compute", name)
            s.add(ComputePoolRecord(name=name, hosts=sorted(chosen)))
        return ComputePool(name, chosen)

    def compute_pools(self) -> list[ComputePool]:
        with self.catalog() as s:
            return [ComputePool(r.name, frozenset(r.hosts))
                    for r in s.scalars(select(ComputePoolRecord).order_by(ComputePoolRecord.name))]

    def compute_pool(self, name: str) -> ComputePool:
        with self.catalog() as s:
            r = self._get(s, ComputePoolRecord, "compute", name)
            return ComputePool(r.name, frozenset(r.hosts))

    def delete_compute(self, name: str) -> None:
        with self.catalog.begin() as s:
            s.delete(self._get(s, ComputePoolRecord, "compute", name))

    # -- storage ------------------------------------------------------------------------------

    def create_storage(self, name: str, kind: str, path: str) -> StoragePool:
        pool = check_storage(name, kind, path)
        with self.catalog.begin() as s:
            self._require_new(s, StoragePoolRecord, "storage", name)
            s.add(StoragePoolRecord(name=name, kind=pool.kind, path=pool.location))
        return pool

    def storage_pools(self) -> list[StoragePool]:
        with self.catalog() as s:
            return [StoragePool(r.name, r.kind, r.path)  # type: ignore[arg-type]
                    for r in s.scalars(select(StoragePoolRecord).order_by(StoragePoolRecord.name))]

    def storage_pool(self, name: str) -> StoragePool:
        """The pool, checked to be usable right now (e.g. its NFS export still mounted)."""
        with self.catalog() as s:
            r = self._get(s, StoragePoolRecord, "storage", name)
        return check_storage(r.name, r.kind, r.path)

    def storage_users(self, pool: StoragePool) -> list[str]:
        """VMs with a disk in the pool."""
        with self.catalog() as s:
            specs = [VMSpec.from_dict(r.spec) for r in s.scalars(select(VMRecord))]
        return sorted(spec.name for spec in specs if any(pool.holds(d.path) for d in spec.disks))

    def vm_folders(self, spec: VMSpec) -> list[Path]:
        """The storage pool folders holding the VM's disks (deleted with the VM)."""
        parents = {Path(d.path).parent for d in spec.disks if not is_network(d.path)}
        return [f for pool in self.storage_pools() if (f := pool.vm_folder(spec.name)) in parents]

    def vm_images(self, spec: VMSpec) -> list[RbdDisk]:
        """The RBD images of the VM's disks that a storage pool of Cairn's created (deleted with the VM)."""
        pools = [pool.rbd for pool in self.storage_pools() if pool.kind == "rbd"]
        images = [remote for d in spec.disks if isinstance(remote := network_disk(d.path), RbdDisk)]
        return [image for image in images if any(pool.holds(image) for pool in pools)
                and image.image.startswith(f"{spec.name}-")]

    def delete_storage(self, name: str) -> None:
        """Forget a pool no VM has disks in; its folder and files stay."""
        with self.catalog.begin() as s:
            r = self._get(s, StoragePoolRecord, "storage", name)
            users = self.storage_users(StoragePool(r.name, r.kind, r.path))
            if users:
                raise ConflictError(f"storage pool {name} holds disks of VMs {', '.join(users)}")
            s.delete(r)

    # -- addresses ----------------------------------------------------------------------------

    def create_address(self, name: str, subnet: str, gateway: str | None = None,
                       first: str | None = None, last: str | None = None) -> AddressPool:
        pool = address_pool_from(name, subnet, gateway, first, last)
        with self.catalog.begin() as s:
            self._require_new(s, AddressPoolRecord, "address", name)
            for other in s.scalars(select(AddressPoolRecord)):
                if IPv4Network(other.subnet).overlaps(pool.subnet):
                    raise ConflictError(f"address pool {name}: {pool.subnet} overlaps pool "
                                        f"{other.name} ({other.subnet})")
            s.add(AddressPoolRecord(name=name, subnet=str(pool.subnet), gateway=str(pool.gateway),
                                    first=str(pool.first), last=str(pool.last)))
        return pool

    def address_pools(self) -> list[AddressPool]:
        with self.catalog() as s:
            return [_address_pool(r) for r in
                    s.scalars(select(AddressPoolRecord).order_by(AddressPoolRecord.name))]

    def address_pool(self, name: str) -> AddressPool:
        with self.catalog() as s:
            return _address_pool(self._get(s, AddressPoolRecord, "address", name))

    def delete_address(self, name: str) -> None:
        with self.catalog.begin() as s:
            r = self._get(s, AddressPoolRecord, "address", name)
            if network := s.scalars(select(NetworkRecord.name)
                                    .where(NetworkRecord.address_pool == name)).first():
                raise ConflictError(f"address pool {name} is the pool of network {network}")
            if leases := self._leases(s, name):
                raise ConflictError(f"address pool {name} has {len(leases)} addresses handed out "
                                    f"(to {', '.join(sorted({lease.owner for lease in leases}))}); "
                                    "release them first")
            s.delete(r)

    def allocate(self, pool: str, owner: str, nic: str | None = None, mac: str | None = None,
                 session: Session | None = None) -> Lease:
        """The lowest free address of the pool, leased to `owner`. With `session`, the lease is
        part of the caller's transaction (committed or rolled back with it)."""
        if not isinstance(owner, str) or not 1 <= len(owner) <= 127:
            raise PoolError("an address lease needs an owner (1-127 characters)")
        if session is not None:
            return self._allocate(session, pool, owner, nic, mac)
        for _ in range(ALLOCATE_ATTEMPTS):
            try:
                with self.catalog.begin() as s:
                    return self._allocate(s, pool, owner, nic, mac)
            except IntegrityError:
                continue  # someone else committed that address first: look again
        raise ConflictError(f"address pool {pool}: too many concurrent allocations, try again")

    def _allocate(self, s: Session, pool: str, owner: str, nic: str | None, mac: str | None) -> Lease:
        # The pool's row locked (PostgreSQL; SQLite's writers are serialized already): allocations
        # from one pool queue instead of all reading the same lowest free address, where one wins
        # and the others retry, and a writer unlucky enough ran out of attempts.
        spec = _address_pool(self._get(s, AddressPoolRecord, "address", pool, for_update=True))
        taken = {IPv4Address(lease.address) for lease in self._leases(s, pool)}
        address = next((a for a in spec.candidates() if a not in taken), None)
        if address is None:
            raise ConflictError(f"address pool {pool} is exhausted: all {spec.size()} addresses "
                                f"of {spec.first}-{spec.last} are handed out")
        s.add(AddressLeaseRecord(pool=pool, address=str(address), owner=owner, nic=nic, mac=mac))
        s.flush()
        return Lease(pool, address, owner, nic, mac)

    def release(self, pool: str, address: str) -> Lease:
        with self.catalog.begin() as s:
            self._get(s, AddressPoolRecord, "address", pool)
            row = s.get(AddressLeaseRecord, (pool, address))
            if row is None:
                raise NotFoundError(f"address {address} of pool {pool} is not handed out")
            s.delete(row)
            return _lease(row)

    def leases(self, pool: str | None = None, owner: str | None = None, seen: Seen = ALL) -> list[Lease]:
        """Addresses handed out; those held by a VM `seen` hides are left out."""
        with self.catalog() as s:
            query = select(AddressLeaseRecord)
            if pool is not None:
                self._get(s, AddressPoolRecord, "address", pool)
                query = query.where(AddressLeaseRecord.pool == pool)
            if owner is not None:
                query = query.where(AddressLeaseRecord.owner == owner)
            rows = sorted(s.scalars(query), key=lambda r: (r.pool, int(IPv4Address(r.address))))
            return [_lease(r) for r in rows if seen.vm(r.owner)]

    @staticmethod
    def _leases(s: Session, pool: str) -> list[AddressLeaseRecord]:
        return list(s.scalars(select(AddressLeaseRecord).where(AddressLeaseRecord.pool == pool)))

    # -- shared -------------------------------------------------------------------------------

    @staticmethod
    def _get(s: Session, record: type[Any], kind: str, name: str, for_update: bool = False) -> Any:
        if (row := s.get(record, name, with_for_update=for_update)) is None:
            raise NotFoundError(f"no {kind} pool named {name}")
        return row

    @staticmethod
    def _require_new(s: Session, record: type[Any], kind: str, name: str) -> None:
        if s.get(record, name) is not None:
            raise ConflictError(f"{kind} pool {name} already exists")


def _address_pool(r: AddressPoolRecord) -> AddressPool:
    return AddressPool(r.name, IPv4Network(r.subnet), IPv4Address(r.gateway), IPv4Address(r.first),
                       IPv4Address(r.last))


def _lease(r: AddressLeaseRecord) -> Lease:
    return Lease(r.pool, IPv4Address(r.address), r.owner, r.nic, r.mac)
