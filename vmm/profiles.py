"""OS profiles: which emulated devices a guest gets, so that it finds drivers for them.

A modern guest (Linux since 2.6.25, Windows with the virtio drivers) runs fastest on
paravirtual virtio devices; an older or driverless one still boots from an IDE disk and gets
its network from an Intel e1000, which nearly every OS knows.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import VMSpecError


@dataclass(frozen=True)
class OSProfile:
    name: str
    description: str
    disk_device: str
    nic_model: str
    # ATAPI on the machine's IDE/AHCI controller: every installer ISO boots from it.
    cdrom_device: str = "ide-cd"


PROFILES: dict[str, OSProfile] = {p.name: p for p in (
    OSProfile("modern", "virtio disks and network (Linux, BSD, Windows with virtio drivers)",
              disk_device="virtio-blk-pci", nic_model="virtio-net-pci"),
    OSProfile("legacy", "IDE disks and an e1000 network card (older or driverless systems)",
              disk_device="ide-hd", nic_model="e1000"),
)}
DEFAULT_PROFILE = "modern"


def ide_addresses(machine: str) -> list[str]:
    """Where IDE/ATAPI devices plug in, in order: q35's AHCI controller has six ports with one
    device each; the i440fx ("pc") PIIX controller has two buses with a master and a slave.
    QEMU's automatic choice fills neither correctly, so each device gets its address."""
    if "q35" in machine:
        return [f"bus=ide.{port}" for port in range(6)]
    return [f"bus=ide.{bus},unit={unit}" for bus in range(2) for unit in range(2)]


def get_profile(name: str) -> OSProfile:
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise VMSpecError(f"unknown OS profile {name!r}: use one of "
                          f"{', '.join(PROFILES)}") from None
