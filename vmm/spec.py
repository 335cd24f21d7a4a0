"""What a VM is made of: plain dataclasses, validated, persisted as JSON-able dicts.

Block graph naming contract (other packages rely on it): a disk named "vda" becomes the protocol
node "vda-file", the format node "vda" and the device "vda-dev" (virtio-blk-pci, share-rw=on).
Snapshots can later put another node on top, so find a disk's current root node through the
query-block entry whose qdev names the device: "/machine/peripheral/vda-dev/virtio-backend" for
virtio-blk, just "vda-dev" for the IDE disks of the legacy OS profile (disk_of_qdev below
matches both). The OS profile picks the device model; the names stay the same. An ISO in the cdrom is the
read-only node "cdrom" on device "cdrom-dev"; it is not a disk (backups and snapshots skip it).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from typing import Any

from .errors import VMSpecError
from .network_disks import is_network, network_disk
from .profiles import DEFAULT_PROFILE, get_profile, ide_addresses


def disk_of_qdev(qdev: str) -> str | None:
    """The disk a query-block entry belongs to, from its qdev in either form (see above)."""
    device = qdev.split("/")[3] if qdev.startswith("/machine/peripheral/") else qdev
    return device.removesuffix("-dev") if device.endswith("-dev") else None


# Names end in \Z, not $: `$` also matches before a trailing newline ("web\n" would pass).
VM_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")
# QEMU node names are at most 31 characters and "<disk>-file" is the longest one we derive,
# so a disk name may have at most 26.
DISK_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,25}\Z")
MACHINE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")
DISK_FORMATS = ("qcow2", "raw")
NIC_NAME_RE = re.compile(r"^net[0-9]{1,2}\Z")
# Locally administered unicast addresses only: the first octet's low bits are x2, x6, xA or xE.
MAC_RE = re.compile(r"^[0-9a-f][26ae](:[0-9a-f]{2}){5}\Z")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
NIC_MODES = ("user", "tap", "bridge")
# The emulated network cards a NIC may ask for instead of its OS profile's (virtio for modern
# guests, an Intel e1000 or a Realtek 8139 for those without virtio drivers).
NIC_MODELS = ("virtio-net-pci", "e1000", "rtl8139")
BOOT_DEVICES = ("disk", "cdrom", "network")
CDROM_NODE = "cdrom"


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
        if isinstance(self.path, str) and is_network(self.path):
            network_disk(self.path)
            if self.format != "raw":
                raise VMSpecError(f"disk {self.name!r}: a network disk ({self.path}) is opened raw, not {self.format}")
        else:
            _check_path(f"disk {self.name!r}", self.path)
        if self.format not in DISK_FORMATS:
            raise VMSpecError(f"disk {self.name!r}: format {self.format!r} is not one of "
                              f"{', '.join(DISK_FORMATS)}")


def random_mac() -> str:
    """A random locally administered MAC in QEMU's customary 52:54:00 prefix."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


@dataclass
class NicSpec:
    """A network card: "user" (QEMU's built-in NAT, needs nothing on the host), "tap" (an
    existing tap interface) or "bridge" (a new tap on an existing Linux bridge, made by
    qemu-bridge-helper)."""

    name: str
    mode: str = "user"
    mac: str = field(default_factory=random_mac)
    tap: str | None = None
    bridge: str | None = None
    model: str | None = None   # one of NIC_MODELS; None: the OS profile's

    def netdev_id(self) -> str:
        return f"{self.name}-nd"

    def validate(self) -> None:
        if not isinstance(self.name, str) or not NIC_NAME_RE.match(self.name):
            raise VMSpecError(f"invalid NIC name {self.name!r}: use net0 ... net99")
        if self.mode not in NIC_MODES:
            raise VMSpecError(f"NIC {self.name}: mode {self.mode!r} is not one of "
                              f"{', '.join(NIC_MODES)}")
        if not isinstance(self.mac, str) or not MAC_RE.match(self.mac):
            raise VMSpecError(f"NIC {self.name}: {self.mac!r} is not a locally administered "
                              "unicast MAC in lower case (e.g. 52:54:00:12:34:56)")
        wanted = {"tap": self.mode == "tap", "bridge": self.mode == "bridge"}
        for key, needed in wanted.items():
            value = getattr(self, key)
            if needed and not (isinstance(value, str) and IFNAME_RE.match(value)):
                raise VMSpecError(f"NIC {self.name}: mode {self.mode} needs {key}=<interface "
                                  f"name, at most 15 characters>, got {value!r}")
            if not needed and value is not None:
                raise VMSpecError(f"NIC {self.name}: {key} is only for mode {key}")
        if self.model is not None and self.model not in NIC_MODELS:
            raise VMSpecError(f"NIC {self.name}: model {self.model!r} is not one of {', '.join(NIC_MODELS)}")


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
    profile: str = DEFAULT_PROFILE
    nics: list[NicSpec] = field(default_factory=list)
    cdrom: str | None = None
    # Firmware boot order, e.g. ["cdrom", "disk"]: the first disk, the cdrom, the first NIC.
    # Empty leaves QEMU's default (the first disk). A direct kernel boot ignores it.
    boot: list[str] = field(default_factory=list)
    # A VGA card and a password-protected VNC server on a unix socket in the run directory.
    vnc: bool = False

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
        profile = get_profile(self.profile)
        ide_devices = int(self.cdrom is not None)
        if profile.disk_device.startswith("ide-"):
            ide_devices += len(self.disks)
        if ide_devices > len(ide_addresses(self.machine)):
            raise VMSpecError(f"VM {self.name!r}: machine {self.machine} has room for "
                              f"{len(ide_addresses(self.machine))} IDE devices (disks of the "
                              f"{self.profile} profile and the cdrom), not {ide_devices}")
        self._validate_nics()
        if self.cdrom is not None:
            _check_path(f"VM {self.name!r} cdrom", self.cdrom)
        self._validate_boot()
        if not isinstance(self.vnc, bool):
            raise VMSpecError(f"VM {self.name!r}: vnc must be true or false")

    def _validate_nics(self) -> None:
        if not isinstance(self.nics, list) or not all(isinstance(n, NicSpec) for n in self.nics):
            raise VMSpecError(f"VM {self.name!r}: nics must be a list of NicSpec")
        for nic in self.nics:
            nic.validate()
        for what, values in (("NIC names", [n.name for n in self.nics]),
                             ("MAC addresses", [n.mac for n in self.nics])):
            if len(set(values)) != len(values):
                raise VMSpecError(f"VM {self.name!r}: duplicate {what} in {values}")

    def _validate_boot(self) -> None:
        if not isinstance(self.boot, list) or len(set(map(str, self.boot))) != len(self.boot):
            raise VMSpecError(f"VM {self.name!r}: boot must be a list without repeats")
        present = {"disk": bool(self.disks), "cdrom": self.cdrom is not None,
                   "network": bool(self.nics)}
        for device in self.boot:
            if device not in BOOT_DEVICES:
                raise VMSpecError(f"VM {self.name!r}: boot device {device!r} is not one of "
                                  f"{', '.join(BOOT_DEVICES)}")
            if not present[device]:
                raise VMSpecError(f"VM {self.name!r}: boot from {device}, but the VM has none")

    def drop_nics(self, names: set[str]) -> None:
        """Remove these NICs; without any left, the network leaves the boot order too."""
        self.nics = [n for n in self.nics if n.name not in names]
        self.boot = [b for b in self.boot if b != "network" or self.nics]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VMSpec:
        """Inverse of to_dict(); the result is validated."""
        if not isinstance(data, dict):
            raise VMSpecError(f"a VM spec must be a JSON object, got {type(data).__name__}")
        _check_keys("VM spec", data, cls)
        spec = cls(**{**data, "disks": _items(data, "disks", DiskSpec),
                          "nics": _items(data, "nics", NicSpec)})
        spec.validate()
        return spec


def _items(data: dict[str, Any], key: str, kind: type) -> list[Any]:
    values = data.get(key, [])
    if not isinstance(values, list):
        raise VMSpecError(f"VM spec: {key} must be a list")
    items = []
    for value in values:
        if not isinstance(value, dict):
            raise VMSpecError(f"VM spec: each of {key} must be a JSON object")
        _check_keys(f"{key} entry", value, kind)
        items.append(kind(**value))
    return items


def _check_keys(what: str, data: dict[str, Any], kind: type) -> None:
    known, required = _keys(kind)
    if unknown := set(data) - known:
        raise VMSpecError(f"{what}: unknown keys {sorted(unknown)}")
    if missing := required - set(data):
        raise VMSpecError(f"{what}: missing keys {sorted(missing)}")


@cache   # a listing loads a spec per VM
def _keys(kind: type) -> tuple[frozenset[str], frozenset[str]]:
    """The keys a dataclass takes, and those it needs."""
    return (frozenset(f.name for f in fields(kind)),
            frozenset(f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING))


def _check_path(what: str, path: object) -> None:
    if not isinstance(path, str) or not path:
        raise VMSpecError(f"{what}: path must be a non-empty string")
    # QEMU -daemonize changes its working directory to /, so a relative path would later
    # (e.g. for snapshot files) mean something else than when the VM was started.
    if not os.path.isabs(path):
        raise VMSpecError(f"{what}: path {path!r} must be absolute")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
