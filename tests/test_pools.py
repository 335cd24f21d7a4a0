"""Pools: address pools hand out each address once (also under concurrency) and keep their
leases across restarts; storage pools are checked folders VM disks go into; compute pools
narrow placement. Bad input gets a clear error and changes nothing."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from appliance.pools.service import PoolError, check_storage, mount_of
from appliance.vms.service import VMOptions
from vmm.placement import Host, PlacementError, place

MiB = 1 << 20


def test_addresses_are_handed_out_once_released_and_persisted(appliance: Appliance) -> None:
    pools = appliance.vms.pools
    pool = pools.create_address("small", "10.60.0.0/29")        # hosts .1-.6, .1 the gateway
    assert (str(pool.gateway), str(pool.first), str(pool.last), pool.size()) == \
        ("10.60.0.1", "10.60.0.2", "10.60.0.6", 5)
    got = [str(pools.allocate("small", f"owner{i}").address) for i in range(5)]
    assert got == ["10.60.0.2", "10.60.0.3", "10.60.0.4", "10.60.0.5", "10.60.0.6"]
    with pytest.raises(ConflictError, match="exhausted: all 5 addresses"):
        pools.allocate("small", "one-too-many")
    pools.release("small", "10.60.0.4")
    # The lowest free address comes back first; the others are untouched.
    assert str(pools.allocate("small", "later").address) == "10.60.0.4"
    # Leases are in the catalog: a new appliance on the same data dir sees them.
    again = Appliance.open(str(appliance.settings.data_dir)).vms.pools
    assert [(str(lease.address), lease.owner) for lease in again.leases("small")] == [
        ("10.60.0.2", "owner0"), ("10.60.0.3", "owner1"), ("10.60.0.4", "later"),
        ("10.60.0.5", "owner3"), ("10.60.0.6", "owner4")]


def test_concurrent_allocations_never_share_an_address(appliance: Appliance) -> None:
    pools = appliance.vms.pools
    pools.create_address("busy", "10.61.0.0/24", first="10.61.0.10", last="10.61.0.69")
    # Each thread its own appliance (its own engine), like the CLI and the server side by side.
    data_dir = str(appliance.settings.data_dir)

    def grab(worker: int) -> list[IPv4Address]:
        mine = Appliance.open(data_dir).vms.pools
        return [mine.allocate("busy", f"w{worker}").address for _ in range(10)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = [a for batch in pool.map(grab, range(6)) for a in batch]
    assert len(results) == 60 and len(set(results)) == 60
    assert {str(a) for a in results} == {f"10.61.0.{i}" for i in range(10, 70)}


@pytest.mark.parametrize(("args", "message"), [
    (("bad name", "10.62.0.0/24"), "invalid address pool name"),
    (("p", "10.62.0.0/33"), "address pool p:"),
    (("p", "10.62.0.1/24"), "has host bits set"),
    (("p", "not-a-subnet"), "address pool p:"),
    (("p", "10.62.0.0/31"), "too small"),
    (("p", "10.62.0.0/24", "10.63.0.1"), "gateway 10.63.0.1 is not a host address"),
    (("p", "10.62.0.0/24", None, "10.62.0.9", "10.62.0.5"), "first 10.62.0.9 is after last"),
    (("p", "10.62.0.0/30", "10.62.0.1", "10.62.0.1", "10.62.0.1"), "no address besides the gateway"),
])
def test_bad_address_pools_are_refused(appliance: Appliance, args: tuple, message: str) -> None:
    with pytest.raises(PoolError, match=message):
        appliance.vms.pools.create_address(*args)
    assert appliance.vms.pools.address_pools() == []


def test_address_pool_conflicts(appliance: Appliance) -> None:
    pools = appliance.vms.pools
    pools.create_address("a", "10.64.0.0/24")
    with pytest.raises(ConflictError, match="already exists"):
        pools.create_address("a", "10.65.0.0/24")
    with pytest.raises(ConflictError, match="overlaps pool a"):
        pools.create_address("b", "10.64.0.128/25")
    with pytest.raises(NotFoundError, match="no address pool named nope"):
        pools.allocate("nope", "x")
    lease = pools.allocate("a", "x")
    with pytest.raises(ConflictError, match="1 addresses handed out"):
        pools.delete_address("a")
    with pytest.raises(NotFoundError, match="10.64.0.99 of pool a is not handed out"):
        pools.release("a", "10.64.0.99")
    pools.release("a", str(lease.address))
    pools.delete_address("a")
    assert pools.address_pools() == []


def test_storage_pools_are_checked_and_hold_vm_disks(appliance: Appliance, tmp_path: Path) -> None:
    pools = appliance.vms.pools
    folder = tmp_path / "fast"
    with pytest.raises(PoolError, match="is not an existing directory"):
        pools.create_storage("fast", "dir", str(folder))
    with pytest.raises(PoolError, match="must be absolute"):
        pools.create_storage("fast", "dir", "relative/path")
    with pytest.raises(PoolError, match="type 'ceph' is not one of dir, nfs"):
        pools.create_storage("fast", "ceph", str(tmp_path))
    folder.mkdir()
    with pytest.raises(PoolError, match="is not a mount point"):
        pools.create_storage("fast", "nfs", str(folder))
    assert pools.storage_pools() == []
    pools.create_storage("fast", "dir", str(folder))

    spec = appliance.vms.create("pooled", [64 * MiB], options=VMOptions(storage_pool="fast"))
    assert [Path(d.path).parent for d in spec.disks] == [folder / "pooled"]
    assert (folder / "pooled" / "vda.qcow2").is_file()
    with pytest.raises(ConflictError, match="holds disks of VMs pooled"):
        pools.delete_storage("fast")
    with pytest.raises(NotFoundError, match="no storage pool named nope"):
        appliance.vms.create("elsewhere", [64 * MiB], options=VMOptions(storage_pool="nope"))
    appliance.vms.delete("pooled")
    assert not (folder / "pooled").exists() and folder.is_dir()
    pools.delete_storage("fast")


@contextmanager
def tmpfs(point: Path) -> Iterator[Path]:
    """A small tmpfs mounted at `point` (made here) for the duration (the suite runs as root)."""
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cairn-test", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_an_nfs_pool_must_be_a_mounted_nfs_export(appliance: Appliance, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as point:
        assert mount_of(point) == (str(point), "tmpfs")
        assert mount_of(tmp_path) is None
        with pytest.raises(PoolError, match="is a tmpfs mount, not NFS"):
            appliance.vms.pools.create_storage("nas", "nfs", str(point))
        # A read-only folder is refused whatever its kind.
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        with pytest.raises(PoolError, match="cannot write in .*Read-only file system"):
            check_storage("nas", "dir", point)


def test_a_pool_whose_mount_went_away_is_refused_at_use(appliance: Appliance, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as point:
        appliance.vms.pools.create_storage("gone", "dir", str(point))
    point.rmdir()
    with pytest.raises(PoolError, match="is not an existing directory"):
        appliance.vms.pools.storage_pool("gone")


def test_compute_pools_narrow_placement(appliance: Appliance) -> None:
    pools = appliance.vms.pools
    with pytest.raises(NotFoundError, match="no hosts named elsewhere"):
        pools.create_compute("edge", ["local", "elsewhere"])
    with pytest.raises(PoolError, match="name at least one host"):
        pools.create_compute("edge", [])
    pool = pools.create_compute("edge", ["local"])
    assert pools.compute_pools() == [pool]
    hosts = [Host("local", 1024, 2, 0.5), Host("big", 65536, 64, 0.0)]
    # Without the pool the big host wins; within it only the local one may be chosen.
    assert place("vm", 512, hosts, {}, []).host == "big"
    assert place("vm", 512, pool.filter(hosts), {}, []).host == "local"
    with pytest.raises(PlacementError, match="needs 2048 MiB"):
        place("vm", 2048, pool.filter(hosts), {}, [])
    pools.delete_compute("edge")
    with pytest.raises(NotFoundError, match="no compute pool named edge"):
        pools.compute_pool("edge")
