"""Which of a VM's disks a backup reads: by default every disk that holds data.

A selector is a shell pattern on the disk's name (`vdb`, `vd[b-d]`, `sd*`) or `kind:<tag>` on
what the disk is: its format (qcow2, raw), where its data lives (file, block, network, volume),
its device (disk, lun) or a flag (readonly, shareable, data-file). `include` keeps only the disks
one of its selectors matches; `exclude` then drops those one of its selectors matches.

Some disks are never read, whatever the selection says, and the backup notes why: CD-ROMs and
floppies (their medium is not the VM's data), empty drives, and SCSI LUNs passed through to the
guest (device='lun': the guest's commands bypass QEMU, so no instant of them can be taken).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.errors import ConflictError

if TYPE_CHECKING:   # light on purpose, as options.py that holds a selection
    from vmm.hosts import HostDisk

KIND_PREFIX = "kind:"
TAGS = ("qcow2", "raw", "file", "block", "network", "volume", "dir", "disk", "lun", "readonly", "shareable",
        "data-file")


def _never_read(disk: HostDisk) -> str | None:
    if disk.device in ("cdrom", "floppy"):
        return f"a {disk.device}: removable media are not the VM's data"
    if disk.path is None:
        return "an empty drive"
    if disk.device == "lun":
        return ("a SCSI LUN passed through (device='lun'): the guest's commands bypass QEMU, so no instant of it "
                "can be taken; back it up where it is stored, or attach it as device='disk'")
    return None


@dataclass(frozen=True)
class DiskSelection:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for selector in (*self.include, *self.exclude):
            if not isinstance(selector, str) or not selector.strip():
                raise ValueError(f"a disk selector is a name pattern or kind:<tag>, not {selector!r}")
            if selector.startswith(KIND_PREFIX) and selector[len(KIND_PREFIX):] not in TAGS:
                raise ValueError(f"disk selector {selector!r}: the kinds are {', '.join(TAGS)}")

    @classmethod
    def of(cls, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None) -> DiskSelection:
        return cls(tuple(include or ()), tuple(exclude or ()))

    def choose(self, owner: str, disks: list[HostDisk]) -> Choice:
        """The disks to read, in their order, and why each of the others is left out. A
        selection that leaves nothing to read is refused: it is a mistake, not a backup."""
        choice = Choice()
        for disk in disks:
            why = _never_read(disk)
            if why is None and self.include and not any(_matches(s, disk) for s in self.include):
                why = f"not included (include: {', '.join(self.include)})"
            if why is None:
                why = next((f"excluded ({s})" for s in self.exclude if _matches(s, disk)), None)
            if why is None:
                choice.chosen.append(disk)
            else:
                choice.left_out[disk.target] = why
        for what, selectors in (("include", self.include), ("exclude", self.exclude)):
            for selector in selectors:
                if not any(_matches(selector, d) for d in disks):
                    choice.unmatched.append(f"{what} {selector!r} matches no disk of {owner}")
        if not choice.chosen:
            reasons = "; ".join(f"{t}: {why}" for t, why in choice.left_out.items()) or "it has none"
            raise ConflictError(f"{owner} has no disk to back up ({reasons}): change the disk selection")
        return choice


def _matches(selector: str, disk: HostDisk) -> bool:
    if selector.startswith(KIND_PREFIX):
        return selector[len(KIND_PREFIX):] in disk.tags()
    return fnmatch.fnmatchcase(disk.target, selector)


@dataclass
class Choice:
    chosen: list[HostDisk] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)   # disk -> why it is not read
    unmatched: list[str] = field(default_factory=list)       # selectors that matched nothing

    @property
    def names(self) -> list[str]:
        return [d.target for d in self.chosen]

    @property
    def notes(self) -> list[str]:
        return [f"{target}: left out: {why}" for target, why in self.left_out.items()] + self.unmatched

