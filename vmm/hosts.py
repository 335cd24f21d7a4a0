"""What every kind of host offers the appliance (libvirt_host.LibvirtHost, remote.RemoteHost):
its VMs as it reports them, starting and stopping them, and the errors it raises."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import VMError

# States in which a VM's disks are in use by a running QEMU (and can be backed up live).
ACTIVE_STATES = ("running", "paused", "stopping")


class HostError(VMError):
    """The host refused; the message is the host's own."""


class HostUnreachableError(HostError):
    pass


class HostVMNotFoundError(HostError):
    pass


class HostVMStateError(HostError):
    """The VM is not in a state that allows the operation."""


@dataclass(frozen=True)
class HostDisk:
    target: str            # the guest's name for it: vda, sdb...
    path: str | None       # the image file or block device on the host; None for network disks
    format: str            # qcow2, raw...


@dataclass(frozen=True)
class HostVM:
    name: str
    uuid: str | None
    state: str             # running, paused, stopping, stopped, crashed, suspended, unknown
    vcpus: int
    memory_mib: int
    disks: list[HostDisk] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "state": self.state, "vcpus": self.vcpus,
                "memory_mib": self.memory_mib, "disks": [vars(d) for d in self.disks]}


class HostDriver(Protocol):
    def check(self) -> str:
        """Proves the host answers; returns what runs its VMs (e.g. "QEMU 7.2.0")."""
        ...

    def vms(self) -> list[HostVM]: ...
    def info(self, name: str) -> HostVM: ...
    def start(self, name: str) -> HostVM: ...
    def stop(self, name: str, timeout: float = 60.0, force: bool = False) -> HostVM: ...
