"""How to back up a VM: the choices a backup request, a policy and the CLI share.

Light on purpose (no QEMU, store or transport code): the CLI and the API's request models
import it to show and check the defaults.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from .selection import DiskSelection

if TYPE_CHECKING:
    from transports.sshfs import SshfsEndpoint

# As in the nSSV design: after this many incremental reads a disk is read in full again, so
# a change tracking error cannot live on in the chain for ever.
DEFAULT_FULL_EVERY = 63

# progress(disk, bytes done, bytes to read)
Progress = Callable[[str, int, int], None]


# How a running VM's disks reach the store. pull: Cairn reads QEMU's NBD export of the instant.
# push: QEMU writes the instant into qemu-nbd targets on this side. sshfs: QEMU writes it into
# files in a directory of this side, mounted with sshfs where QEMU runs.
Transport = Literal["pull", "push", "sshfs"]
TRANSPORTS: tuple[str, ...] = get_args(Transport)


@dataclass(frozen=True)
class BackupOptions:
    # Read every disk in full after this many incrementals of it.
    full_every: int = DEFAULT_FULL_EVERY
    transport: Transport = "pull"
    sshfs: SshfsEndpoint | None = None    # needed by the sshfs transport
    disks: DiskSelection = field(default_factory=DiskSelection)   # which disks to read (default: all that hold data)

    def __post_init__(self) -> None:
        if not isinstance(self.full_every, int) or isinstance(self.full_every, bool) or self.full_every < 0:
            raise ValueError(f"full_every must be a whole number >= 0, got {self.full_every!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport {self.transport!r} is not one of {', '.join(TRANSPORTS)}")
        if (self.transport == "sshfs") != (self.sshfs is not None):
            raise ValueError("the sshfs transport needs an sshfs endpoint, and only it takes one")
