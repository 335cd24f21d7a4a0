"""Where a VM runs: the hosts it may use, the one placement picks for it, and the record of it.

A VM uses the hosts of its compute pool (VMOptionsRecord.compute_pool), or this machine alone
without one. Two kinds of VM stay on this machine whatever their pool: one on a Cairn network
(its taps, bridge and DHCP server live here) and an instant clone still reading its source
(its stream is driven through this machine's QEMU). The candidate hosts are probed at once
(what each has, what runs there, whether it sees the VM's files), and vmm.placement.place
picks one by the VM's scheduling groups, then free memory and load.

VMRecord.host is written before QEMU starts on a host, so it never points away from a
running QEMU; VMRecord.should_run says whether HA should bring the VM back if that host dies.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import CairnError, NotFoundError
from appliance.pools.networks import NetworkService
from appliance.pools.service import PoolService
from vmm.errors import VMError
from vmm.placement import LOCAL_HOST, SchedulingGroup, place
from vmm.qemu import VMStatus
from vmm.qemu_host import QemuHost
from vmm.spec import VMSpec

from .records import VMOptionsRecord, VMRecord

if TYPE_CHECKING:
    from appliance.hosts.pool import HostPool

T = TypeVar("T")


class VMPlacement:
    def __init__(self, catalog: sessionmaker[Session], pools: PoolService, networks: NetworkService,
                 groups: Callable[[], list[SchedulingGroup]]):
        self.catalog = catalog
        self.pools = pools
        self.networks = networks
        self.groups = groups

    @cached_property
    def pool(self) -> HostPool:
        """The hosts, made on first use: a VM that only ever runs here needs no SSH or libvirt."""
        from appliance.hosts.pool import HostPool
        from appliance.hosts.service import HostService

        return HostPool(HostService(self.catalog), self.networks.driver)

    # -- the record -------------------------------------------------------------------------------

    def host_of(self, name: str) -> str:
        with self.catalog() as s:
            rec = s.get(VMRecord, name)
            if rec is None:
                raise NotFoundError(f"no VM named {name}")
            return rec.host

    def record(self, name: str, should_run: bool, host: str | None = None) -> None:
        """From now on the VM is on `host` (if given), and meant to run there or not."""
        with self.catalog.begin() as s:
            rec = s.get(VMRecord, name)
            if rec is None:
                raise NotFoundError(f"no VM named {name}")
            rec.should_run = should_run
            if host is not None:
                rec.host = host

    def compute_pool(self, name: str) -> str | None:
        with self.catalog() as s:
            opts = s.get(VMOptionsRecord, name)
            return opts.compute_pool if opts else None

    def set_compute_pool(self, name: str, pool: str | None) -> None:
        """Place the VM among this compute pool's hosts from its next start (None: here only)."""
        if pool is not None:
            self.pools.compute_pool(pool)
        with self.catalog.begin() as s:
            if s.get(VMRecord, name) is None:
                raise NotFoundError(f"no VM named {name}")
            opts = s.get(VMOptionsRecord, name) or VMOptionsRecord(vm_name=name)
            opts.compute_pool = pool
            s.merge(opts)

    # -- choosing ---------------------------------------------------------------------------------

    def candidates(self, name: str, pool: str | None = None) -> tuple[list[str], dict[str, str]]:
        """The hosts the VM may use (of compute pool `pool`, default its own), and those of
        them it may not, with why."""
        with self.catalog() as s:
            opts = s.get(VMOptionsRecord, name)
        pool = pool or (opts.compute_pool if opts else None)
        if pool is None:
            return [LOCAL_HOST], {}
        hosts = sorted(self.pools.compute_pool(pool).hosts)
        if opts is not None and opts.linked_to:
            why = f"cannot run it: an instant clone runs on this machine until it stops reading {opts.linked_to}"
        elif self.networks.attachments(vm=name):
            why = "cannot run it: its NICs are on Cairn networks, which live on this machine"
        else:
            return hosts, {}
        return [h for h in hosts if h == LOCAL_HOST], {h: why for h in hosts if h != LOCAL_HOST}

    async def choose(self, spec: VMSpec, avoid: Collection[str] = (), pool: str | None = None,
                     files: bool = True, among: Collection[str] | None = None) -> QemuHost:
        """The host `spec` should start on now, not one of `avoid` (and one of `among`, if
        given); PlacementError if none may. `files=False` asks only whether it would fit (a
        VM whose disks are not made yet), not whether a host can open its files."""
        names, unusable = self.candidates(spec.name, pool)
        if among is not None:
            names = [h for h in names if h in among]
        unusable |= {host: "is being fenced off" for host in avoid if host in names}
        probes, silent = await self.pool.probe([h for h in names if h not in unusable], spec)
        unusable |= silent
        # A host that cannot start the VM (a disk or tap it lacks) is passed over for one that
        # can; if none can, the start on the best of them says why, in the host's own words.
        refused = {host: f"cannot start it: {probe.refusal}" for host, probe in probes.items() if probe.refusal}
        if files and len(refused) < len(probes):
            unusable |= refused
            probes = {host: probe for host, probe in probes.items() if host not in refused}
        with self.catalog() as s:
            recorded = {name: (host, should_run) for name, host, should_run
                        in s.execute(select(VMRecord.name, VMRecord.host, VMRecord.should_run))}
        # Where the other VMs run, for the scheduling groups: as their hosts say, and on a host
        # that did not answer, the VMs meant to run there (they may well still run).
        placements = {vm: host for vm, (host, should_run) in recorded.items() if should_run and host in silent}
        placements |= {vm: host for host, probe in probes.items() for vm in probe.running
                       if recorded.get(vm, ("", False))[0] == host}
        hosts = [probe.resources.as_host(host, probe.owed_mib) for host, probe in probes.items()]
        chosen = place(spec.name, spec.memory_mib, hosts, placements, self.groups(), unusable)
        return self.pool.host(chosen.host)

    def fits(self, spec: VMSpec, pool: str | None = None) -> None:
        """PlacementError unless the VM would fit on one of its hosts (of compute pool `pool`,
        default its own): enough memory, and mandatory policies that leave it a host."""
        run_now(self.choose(spec, pool=pool, files=False))

    # -- running on another host ------------------------------------------------------------------

    async def run(self, host: QemuHost, spec: VMSpec, paused: bool = False) -> VMStatus:
        from appliance.hosts.service import host_errors

        with host_errors():
            return await host.run(spec, paused)

    async def stop(self, host: str, name: str, timeout: float, force: bool) -> VMStatus:
        from appliance.hosts.service import host_errors

        with host_errors():
            return await self.pool.host(host).stop(name, timeout, force)

    def forget(self, host: str, name: str) -> None:
        """Drop the VM's run directory on `host` (its state and logs: no disk); a host that does
        not answer keeps it."""
        with suppress(CairnError, VMError):
            run_now(self.pool.host(host).forget(name))


def run_now(call: Coroutine[Any, Any, T]) -> T:
    """Run a host call to its end from synchronous code: in this thread, or in one of its own
    while this one waits if this thread runs an event loop already (a synchronous method
    called from a coroutine)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(call)
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, call).result()
