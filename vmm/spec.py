"""What a VM is made of: plain dataclasses, validated, persisted as JSON-able dicts.

Block graph naming contract (other packages rely on it): a disk named "vda" becomes the protocol
node "vda-file", the format node "vda" and the device "vda-dev" (virtio-blk-pci, share-rw=on).
Snapshots can later put another node on top, so find a disk's current root node through the
query-block entry whose qdev starts with "/machine/peripheral/vda-dev".
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from .errors import VMSpecError

VM_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# QEMU node names are at most 31 characters and "<disk>-file" is the longest one we derive,
# so a disk name may have at most 26.
DISK_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,25}$")
MACHINE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
DISK_FORMATS = ("qcow2", "raw")


def validate_vm_name(name: str) -> str:
    if not isinstance(name, str) or not VM_NAME_RE.match(name):
        raise VMSpecError(f"invalid VM name {name!r}: use 1-63 characters a-z 0-9 _ -, "
                          "starting with a letter")
    return name


@dataclass
class DiskSpec:
    name: str
    path: str
    format: str = "qcow2"

    def protocol_node(self) -> str:
        return f"{self.name}-file"

    def format_node(self) -> str:
        return self.name

    def device_id(self) -> str:
        return f"{self.name}-dev"

    def validate(self) -> None:
        if not isinstance(self.name, str) or not DISK_NAME_RE.match(self.name):
            raise VMSpecError(f"invalid disk name {self.name!r}: use 1-26 characters a-z 0-9 _ -, "
                              "starting with a letter")
        _check_path(f"disk {self.name!r}", self.path)
        if self.format not in DISK_FORMATS:
            raise VMSpecError(f"disk {self.name!r}: format {self.format!r} is not one of "
                              f"{', '.join(DISK_FORMATS)}")


@dataclass
class VMSpec:
    name: str
    memory_mib: int = 256
    vcpus: int = 1
    disks: list[DiskSpec] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    machine: str = "q35"

    def validate(self) -> None:
        validate_vm_name(self.name)
        if not _is_int(self.memory_mib) or self.memory_mib < 16:
            raise VMSpecError(f"VM {self.name!r}: memory_mib must be an integer >= 16, "
                              f"got {self.memory_mib!r}")
        if not _is_int(self.vcpus) or not 1 <= self.vcpus <= 255:
            raise VMSpecError(f"VM {self.name!r}: vcpus must be an integer 1-255, "
                              f"got {self.vcpus!r}")
        if not isinstance(self.disks, list) or not all(isinstance(d, DiskSpec) for d in self.disks):
            raise VMSpecError(f"VM {self.name!r}: disks must be a list of DiskSpec")
        for disk in self.disks:
            disk.validate()
        names = [d.name for d in self.disks]
        if len(set(names)) != len(names):
            raise VMSpecError(f"VM {self.name!r}: duplicate disk names in {names}")
        if self.kernel is not None:
            _check_path(f"VM {self.name!r} kernel", self.kernel)
        if self.initrd is not None:
            _check_path(f"VM {self.name!r} initrd", self.initrd)
        if self.append is not None and not isinstance(self.append, str):
            raise VMSpecError(f"VM {self.name!r}: append must be a string")
        if self.kernel is None and (self.initrd is not None or self.append is not None):
            raise VMSpecError(f"VM {self.name!r}: initrd and append need a kernel")
        if not isinstance(self.machine, str) or not MACHINE_RE.match(self.machine):
            raise VMSpecError(f"VM {self.name!r}: invalid machine type {self.machine!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMSpec:
        """Inverse of to_dict(); the result is validated."""
        if not isinstance(data, dict):
            raise VMSpecError(f"a VM spec must be a JSON object, got {type(data).__name__}")
        _check_keys("VM spec", data, cls)
        disks_data = data.get("disks", [])
        if not isinstance(disks_data, list):
            raise VMSpecError("VM spec: disks must be a list")
        disks = []
        for disk in disks_data:
            if not isinstance(disk, dict):
                raise VMSpecError("VM spec: each disk must be a JSON object")
            _check_keys("disk spec", disk, DiskSpec)
            disks.append(DiskSpec(**disk))
        spec = cls(**{**data, "disks": disks})
        spec.validate()
        return spec


def _check_keys(what: str, data: dict[str, Any], kind: type) -> None:
    known = {f.name for f in fields(kind)}
    required = {f.name for f in fields(kind)
                if f.default is MISSING and f.default_factory is MISSING}
    if unknown := set(data) - known:
        raise VMSpecError(f"{what}: unknown keys {sorted(unknown)}")
    if missing := required - set(data):
        raise VMSpecError(f"{what}: missing keys {sorted(missing)}")


def _check_path(what: str, path: object) -> None:
    if not isinstance(path, str) or not path:
        raise VMSpecError(f"{what}: path must be a non-empty string")
    # QEMU -daemonize changes its working directory to /, so a relative path would later
    # (e.g. for snapshot files) mean something else than when the VM was started.
    if not os.path.isabs(path):
        raise VMSpecError(f"{what}: path {path!r} must be absolute")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
