"""Live migration of a running VM to another host of its compute pool, for a planned move (the
QEMU part at each end is vmm/migration.py; its disks stay where they are, on the storage the
pool's hosts share).

1. The target must be another host of the VM's compute pool that answers, sees the VM's files
   and that placement allows (its memory, the VM's mandatory scheduling policies).
2. The destination QEMU starts there and listens on the address the source host reaches it at:
   an ssh host's own address (the one the appliance connects to), or, for this machine, the
   local end of the appliance's connection to the source host.
3. The source sends the guest's memory and devices straight to it; once the destination runs
   the guest, the source's QEMU is quit and the VM's record points at the target.

It runs as a job on the VM's resource (kind vm.migrate), so no backup, snapshot or clone of the
VM runs meanwhile. Whatever interrupts it, settle() makes the record and the hosts agree again:
the guest runs on the side whose QEMU runs it, and the other side's QEMU is stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.errors import ConflictError
from vmm.migration import DEFAULT_TIMEOUT, migration_uri
from vmm.qemu_host import QemuHost
from vmm.remote import RemoteQemuHost
from vmm.spec import VMSpec

from .placement import run_now

if TYPE_CHECKING:
    from .service import VMService


@dataclass(frozen=True)
class Move:
    spec: VMSpec
    source: QemuHost
    target: QemuHost


class VMMigration:
    def __init__(self, vms: VMService):
        self.vms = vms
        self.placement = vms.placement

    async def plan(self, name: str, target: str) -> Move:
        """The move of running VM `name` to host `target`, checked; ConflictError or
        PlacementError (with the reason) if it may not go there now."""
        spec = self.vms.spec(name)
        source = self.placement.host_of(name)
        state = self.vms.status(name).state
        if state != "running":
            raise ConflictError(f"VM {name} is {state}: only a running VM migrates (a stopped one starts wherever "
                                "placement puts it; a paused one: resume it first)")
        if target == source:
            raise ConflictError(f"VM {name} runs on {target} already")
        hosts, refused = self.placement.candidates(name)
        if target not in hosts:
            pool = self.placement.compute_pool(name)
            raise ConflictError(f"host {target} is not one VM {name} may run on: "
                                + (f"its compute pool {pool} has {', '.join(hosts)}" if pool
                                   else "it has no compute pool, so it runs on this machine only")
                                + (f" ({refused[target]})" if target in refused else ""))
        return Move(spec, self.placement.pool.host(source), await self.placement.choose(spec, among=[target]))

    def check(self, name: str, target: str) -> None:
        """plan()'s refusal, if any, for a caller without an event loop (a job's admission)."""
        run_now(self.plan(name, target))

    async def run(self, move: Move, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Migrate; on success the VM is recorded on the target. Returns what it cost."""
        from appliance.hosts.service import host_errors

        name = move.spec.name
        with host_errors():
            address = await self._address_of(move.target, move.source)
            port = await move.target.receive_migration(move.spec, address)
            try:
                stats = await move.source.send_migration(name, migration_uri(address, port), timeout)
            except BaseException:
                await self.settle(name, move.source.name, move.target.name)
                raise
        self.placement.record(name, should_run=True, host=move.target.name)
        return {"vm": name, "from": move.source.name, "to": move.target.name, **stats.to_dict()}

    @staticmethod
    async def _address_of(target: QemuHost, source: QemuHost) -> str:
        """Where `source` reaches `target`."""
        if isinstance(target, RemoteQemuHost):
            return target.remote.target.host
        assert isinstance(source, RemoteQemuHost)   # one of the two ends is another host
        return await source.address_facing()

    async def settle(self, name: str, source: str, target: str) -> str:
        """After a migration that failed or was interrupted: the host that runs the guest keeps it,
        the other one's QEMU is stopped, and the record follows. Returns that host."""
        from appliance.hosts.service import host_errors

        with host_errors():
            there = self.placement.pool.host(target)
            landed = (await there.status(name)).state == "running" and await there.run_state(name) == "running"
            keep, drop = (target, source) if landed else (source, target)
            await self.placement.pool.host(drop).stop(name, timeout=0, force=True)
        self.placement.record(name, should_run=True, host=keep)
        return keep

