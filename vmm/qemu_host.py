"""A host where Cairn runs QEMU itself: this machine (LocalQemuHost, over the appliance's own
QemuDriver) or an SSH host (remote.RemoteQemuHost, whose agent runs a LocalQemuHost there).

Both offer the same calls, so placement, HA and migration treat every host alike: what the
host has and whether it can start a VM (probe), running and stopping VMs, the lock probe that
fences a VM off a dead host, and the two ends of a live migration. LibvirtHost is not one:
libvirt's domains are libvirt's to run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .errors import VMError
from .fencing import held_disks
from .migration import DEFAULT_TIMEOUT, MigrationStats, receive, send
from .placement import HostResources, measure
from .qemu import QemuDriver, VMStatus
from .rundir import read_state
from .spec import DiskSpec, VMSpec

ACTIVE = ("running", "paused")


@dataclass(frozen=True)
class HostProbe:
    """A host's answer to "could you run this VM now?"."""

    resources: HostResources
    owed_mib: int                        # memory its running VMs were given and have not taken yet
    running: list[str] = field(default_factory=list)   # those VMs (the probed one aside), by name
    refusal: str | None = None           # why it cannot start the VM (a missing disk, tap...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostProbe:
        return cls(HostResources(**data["resources"]), int(data["owed_mib"]), list(data["running"]),
                   data["refusal"])


def status_to_dict(status: VMStatus) -> dict[str, Any]:
    return asdict(status)


def status_from_dict(data: dict[str, Any]) -> VMStatus:
    return VMStatus(data["name"], data["state"], data["pid"], data.get("accel"))


class QemuHost(Protocol):
    """What placement, HA and migration need of a host. A host that does not answer raises
    vmm.hosts.HostUnreachableError from any call."""

    name: str

    async def probe(self, spec: VMSpec) -> HostProbe: ...
    async def run(self, spec: VMSpec, paused: bool = False) -> VMStatus: ...
    async def status(self, name: str) -> VMStatus: ...
    async def statuses(self) -> dict[str, VMStatus]: ...
    async def stop(self, name: str, timeout: float = 30.0, force: bool = False) -> VMStatus: ...
    async def run_state(self, name: str) -> str: ...
    async def forget(self, name: str) -> None: ...
    async def held_disks(self, disks: list[DiskSpec]) -> list[str]: ...
    async def receive_migration(self, spec: VMSpec, address: str) -> int: ...
    async def send_migration(self, name: str, uri: str, timeout: float = DEFAULT_TIMEOUT) -> MigrationStats: ...


class LocalQemuHost:
    """This machine's QEMUs, through its QemuDriver."""

    def __init__(self, driver: QemuDriver, name: str):
        self.driver = driver
        self.name = name

    async def probe(self, spec: VMSpec) -> HostProbe:
        running = [s for s in self.driver.active().values() if s.state in ACTIVE and s.name != spec.name]
        try:
            self.driver.check_startable(spec)
            refusal = None
        except VMError as err:
            refusal = str(err)
        return HostProbe(measure(), sum(map(self._owed_mib, running)), [s.name for s in running], refusal)

    def _owed_mib(self, status: VMStatus) -> int:
        """What a running guest was given and has not taken yet: its memory less its QEMU's
        resident size (which also holds QEMU's own, so this errs on the side of less)."""
        state = read_state(self.driver.paths(status.name))
        if state is None or status.pid is None:
            return 0
        try:
            with open(f"/proc/{status.pid}/status") as proc:
                rss_kib = next(int(line.split()[1]) for line in proc if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return 0   # it ended meanwhile
        return max(int(state.spec["memory_mib"]) - rss_kib // 1024, 0)

    async def run(self, spec: VMSpec, paused: bool = False) -> VMStatus:
        return await self.driver.start(spec, paused=paused)

    async def status(self, name: str) -> VMStatus:
        return self.driver.status(name)

    async def statuses(self) -> dict[str, VMStatus]:
        return self.driver.active()

    async def stop(self, name: str, timeout: float = 30.0, force: bool = False) -> VMStatus:
        await self.driver.stop(name, timeout=timeout, force=force)
        return self.driver.status(name)

    async def run_state(self, name: str) -> str:
        return await self.driver.run_state(name)

    async def forget(self, name: str) -> None:
        self.driver.forget(name)

    async def held_disks(self, disks: list[DiskSpec]) -> list[str]:
        return held_disks(disks)

    async def receive_migration(self, spec: VMSpec, address: str) -> int:
        return await receive(self.driver, spec, address)

    async def send_migration(self, name: str, uri: str, timeout: float = DEFAULT_TIMEOUT) -> MigrationStats:
        return await send(self.driver, name, uri, timeout)
