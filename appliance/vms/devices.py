"""What adding a disk or a NIC to a VM asks for (VMHardware, hardware.py): plain data, light to
import, so that the command line builds them without loading the services."""
from __future__ import annotations

from dataclasses import dataclass

DISK_NAMES = [f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz"]   # a VM's disks, in order


@dataclass(frozen=True)
class NewDisk:
    """A disk to add: blank, or a thin layer on a library disk image."""
    size: int | None = None          # bytes; on `image`, at least the image's (default: the image's)
    format: str | None = None        # qcow2 or raw; default qcow2 in a folder, raw (the only one) in Ceph
    image: str | None = None         # a library disk image the new disk starts as (never written)
    storage_pool: str | None = None  # default: the pool of the VM's first disk, else the data dir


@dataclass(frozen=True)
class NewNic:
    """A NIC to add: on a Cairn network (a tap on its bridge, an address reserved for its MAC),
    or in one of vmm's own modes (user, tap, bridge)."""
    network: str | None = None
    mode: str = "user"               # vmm.spec.NIC_MODES: user, tap (`tap`), bridge (`bridge`)
    tap: str | None = None
    bridge: str | None = None
    model: str | None = None         # vmm.spec.NIC_MODELS; default the VM's OS profile's
    mac: str | None = None           # default a random locally administered one
