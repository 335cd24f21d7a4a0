"""HA of Cairn's VMs on all their hosts: what vmm.ha.HASupervisor asks of the appliance.

- survey: where each HA VM stands, asking each host that runs one once (concurrently). A VM
  whose host does not answer is HOST_DOWN if it was meant to run (VMRecord.should_run), and
  left alone otherwise. One this supervisor saw running and now finds stopped was stopped by
  its guest: it is no longer meant to run.
- fence: another host of the VM's compute pool that sees its disks probes their locks
  (vmm/fencing.py); a held lock, or no host to probe from, is no proof.
- restart: a start on none of the silent hosts (VMService.start), placed as any start.
- the events that report restarts, waits and giving up (vm.ha.*).
"""
from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING

from sqlalchemy import select

from appliance.catalog.base import utcnow
from vmm.errors import VMError
from vmm.fencing import Fenced, FenceError, FenceProof
from vmm.ha import HAHooks, Health, RestartLimit, VMHealth
from vmm.hosts import HostError
from vmm.placement import LOCAL_HOST
from vmm.qemu import VMStatus

from .records import VMOptionsRecord, VMRecord

if TYPE_CHECKING:
    from .service import VMService

_HEALTH = {"running": Health.RUNNING, "paused": Health.RUNNING, "crashed": Health.CRASHED,
           "stopped": Health.STOPPED}


class VMHighAvailability:
    def __init__(self, vms: VMService):
        self.vms = vms
        self.events = vms.events
        self._seen_running: set[str] = set()

    def hooks(self) -> HAHooks:
        return HAHooks(self.watched, self.survey, self.fence, self.restart, self.restarted, self.waiting,
                       self.gave_up)

    def watched(self) -> dict[str, RestartLimit]:
        with self.vms.catalog() as s:
            rows = s.scalars(select(VMOptionsRecord).where(VMOptionsRecord.ha_enabled.is_(True)))
            return {r.vm_name: RestartLimit(r.ha_max_restarts, r.ha_window_seconds) for r in rows}

    async def survey(self, names: Collection[str]) -> dict[str, VMHealth]:
        with self.vms.catalog() as s:
            where = {r.name: (r.host, r.should_run) for r in s.scalars(select(VMRecord).where(VMRecord.name.in_(names)))}
        hosts = sorted({host for host, _ in where.values()})
        answers = await asyncio.gather(*(self._statuses(host) for host in hosts))
        statuses = dict(zip(hosts, answers, strict=True))
        health = {}
        for name, (host, should_run) in where.items():
            on_host = statuses[host]
            if on_host is None:
                health[name] = VMHealth(Health.HOST_DOWN if should_run else Health.STOPPED, host)
                continue
            state = _HEALTH[on_host[name].state] if name in on_host else Health.STOPPED
            if state is Health.RUNNING:
                self._seen_running.add(name)
            elif state is Health.STOPPED and name in self._seen_running:
                self._seen_running.discard(name)
                if should_run:   # its guest powered it off: it stays off, wherever its host goes
                    self.vms.placement.record(name, should_run=False)
            health[name] = VMHealth(state, host)
        return health

    async def _statuses(self, host: str) -> dict[str, VMStatus] | None:
        """What `host` runs, or None if it does not answer."""
        if host == LOCAL_HOST:
            return self.vms.driver.active()
        try:
            return await self.vms.placement.pool.host(host).statuses()
        except HostError:
            return None

    async def fence(self, name: str, host: str) -> Fenced:
        """Proof that VM `name` cannot run on silent `host`: no process holds its disks' write
        locks, as seen from another host of its pool; FenceError without one."""
        spec = self.vms.spec(name)
        witnesses, _ = self.vms.placement.candidates(name)
        tried = []
        for witness in (w for w in witnesses if w != host):
            try:
                held = await self.vms.placement.pool.host(witness).held_disks(spec.disks)
            except (HostError, VMError) as err:   # silent too, or it does not see the disks
                tried.append(f"{witness}: {err}")
                continue
            if held:
                raise FenceError(name, host, held)
            return Fenced(name, host, FenceProof.LOCKS_FREE)
        raise FenceError(name, host, (), "no other host of its compute pool could probe its disks' locks"
                         + (f" ({'; '.join(tried)})" if tried else ""))

    async def restart(self, name: str, fenced_off: Collection[str]) -> None:
        await self.vms.start(name, fenced_off=fenced_off)

    def restarted(self, name: str, count: int, fenced: Fenced) -> None:
        host = self.vms.placement.host_of(name)
        where = "" if host == fenced.host else f" on host {host}"
        self.events.emit("vm.ha.restarted", f"VM {name} was restarted{where} (restart {count} in its window): "
                         f"{fenced.describe()}", severity="warning", resource=f"vm:{name}",
                         data={"restarts": count, "from": fenced.host, "to": host, "proof": fenced.proof.name})

    def waiting(self, name: str, why: str) -> None:
        self.events.emit("vm.ha.waiting", f"VM {name}: HA waits: {why}", severity="error", resource=f"vm:{name}")

    def gave_up(self, name: str, why: str) -> None:
        with self.vms.catalog.begin() as s:
            if opts := s.get(VMOptionsRecord, name):
                opts.ha_enabled, opts.ha_gave_up_at = False, utcnow()
        self.events.emit("vm.ha.gave_up", f"VM {name}: HA gave up: {why}", severity="error",
                         resource=f"vm:{name}")
