"""What every kind of host offers the appliance (libvirt_host.LibvirtHost, remote.RemoteHost):
its VMs as it reports them, starting and stopping them, and the errors it raises."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
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


# What a guest device is: only "disk" and "lun" hold the VM's data; removable media do not.
DATA_DEVICES = ("disk", "lun")


@dataclass(frozen=True)
class HostDisk:
    """One of a VM's block devices as its host describes it (for libvirt: its <disk> element)."""

    target: str            # the guest's name for it: vda, sdb...
    path: str | None       # the image file, block device or network source; None: an empty drive
    format: str            # qcow2, raw...
    kind: str = "file"     # where the data lives: file, block, network, volume (a pool's), dir, nvme...
    device: str = "disk"   # how the guest sees it: disk, lun (SCSI passthrough), cdrom, floppy
    readonly: bool = False
    shareable: bool = False    # other VMs may open it at the same time
    data_file: str | None = None   # a qcow2 image's external data file (libvirt's <dataStore>)
    backing: tuple[str, ...] = ()  # the files below `path` in its chain, top first

    @property
    def holds_data(self) -> bool:
        """A disk with a medium; CD-ROMs and floppies are not the VM's data."""
        return self.device in DATA_DEVICES and self.path is not None

    def tags(self) -> set[str]:
        """What a disk selection's `kind:<tag>` matches: its format, kind, device and flags."""
        flags = {"readonly": self.readonly, "shareable": self.shareable, "data-file": self.data_file is not None}
        return {self.format, self.kind, self.device} | {tag for tag, on in flags.items() if on}


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
                "memory_mib": self.memory_mib, "disks": [asdict(d) for d in self.disks]}


class HostDriver(Protocol):
    def check(self) -> str:
        """Proves the host answers; returns what runs its VMs (e.g. "QEMU 7.2.0")."""
        ...

    def vms(self) -> list[HostVM]: ...
    def info(self, name: str) -> HostVM: ...
    def start(self, name: str) -> HostVM: ...
    def stop(self, name: str, timeout: float = 60.0, force: bool = False) -> HostVM: ...
