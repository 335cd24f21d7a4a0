"""Turning a VM that something else ran into a Cairn VMSpec: a libvirt domain's XML, or the
command line a QEMU was started with. Its disks stay where they are.

What a VMSpec can say is carried over: memory, vCPUs, machine type, direct kernel boot, disks
(image files or block devices, qcow2 or raw), the first CD-ROM, NICs with their MACs, boot
order, a VNC display. The OS profile follows the disks' bus (virtio: modern; IDE/SATA: legacy),
so the guest finds its disks where it left them. Anything else is listed in the notes, and
what would make the VM boot differently is refused with the reason:
- disks Cairn cannot open (libvirt's network disks and pool volumes, formats other than qcow2 and
  raw; a command line's rbd: and nbd:// disks are taken, raw: vmm/network_disks.py) and
  read-only disks (Cairn's VMs write every disk they have);
- UEFI firmware (Cairn's VMs boot with the machine's BIOS).
NICs on a libvirt network or macvtap become user-mode NICs (with a note): a bridge of the host
keeps them on their network.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from .errors import VMSpecError
from .libvirt_xml import child, disk_of, parse
from .spec import MAC_RE, DiskSpec, NicSpec, VMSpec, random_mac, validate_vm_name

DISK_NAMES = [f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
_BUS_PROFILES = {"virtio": "modern", "ide": "legacy", "sata": "legacy"}
_BOOT = {"hd": "disk", "cdrom": "cdrom", "network": "network"}
_MEMORY_UNITS = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
                 "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40}


class ImportRefusedError(VMSpecError):
    """The VM has something a Cairn VM cannot have; the message says what and what to do."""


@dataclass
class Imported:
    spec: VMSpec
    notes: list[str] = field(default_factory=list)   # what was not carried over, or was changed


def _mib(amount: str, unit: str) -> int:
    factor = _MEMORY_UNITS.get(unit.lower())
    if factor is None:
        raise ImportRefusedError(f"memory unit {unit!r} is unknown")
    if not amount.strip().isdecimal():
        raise ImportRefusedError(f"memory size {amount!r} is not a whole number")
    return int(amount) * factor // (1 << 20)


def _mac(mac: str | None, nic: str, notes: list[str]) -> str:
    if mac and MAC_RE.match(mac.lower()):
        return mac.lower()
    new = random_mac()
    notes.append(f"{nic}: MAC {mac or 'none'} is not a locally administered one Cairn accepts; it gets {new}")
    return new


def _profile(buses: list[str], notes: list[str]) -> str:
    profiles = {_BUS_PROFILES[b] for b in buses if b in _BUS_PROFILES}
    if not set(buses) <= _BUS_PROFILES.keys() or len(profiles) > 1:
        raise ImportRefusedError(f"disk buses {', '.join(sorted(set(buses)))}: a Cairn VM has all its disks on "
                                 "virtio (profile modern) or all on IDE/SATA (profile legacy)")
    return profiles.pop() if profiles else "modern"


# -- libvirt --------------------------------------------------------------------------------------

def from_domain(xml: str, name: str | None = None) -> Imported:
    """A VMSpec like the libvirt domain (its inactive XML), named `name` or as the domain is."""
    root = parse(xml)
    notes: list[str] = []
    os_ = child(root, "os")
    if os_.get("firmware") == "efi" or os_.find("loader") is not None:
        raise ImportRefusedError("the domain boots with UEFI firmware; Cairn's VMs boot with the machine's BIOS")
    memory = child(root, "memory")
    disks: list[DiskSpec] = []
    buses: list[str] = []
    cdrom: str | None = None
    for element in root.iterfind("./devices/disk"):
        disk, bus = disk_of(element), child(element, "target").get("bus", "virtio")
        if disk.device in ("cdrom", "floppy"):
            if disk.device == "cdrom" and cdrom is None and disk.path:
                cdrom = disk.path
            else:
                notes.append(f"{disk.target}: a {disk.device}, not carried over")
            continue
        if disk.kind not in ("file", "block") or disk.format not in ("qcow2", "raw"):
            raise ImportRefusedError(f"disk {disk.target} is a {disk.kind} disk in {disk.format}: Cairn's VMs open "
                                     "qcow2 and raw image files and block devices")
        if disk.path is None:
            raise ImportRefusedError(f"disk {disk.target} has no source: give it its image file or device")
        if disk.readonly:
            raise ImportRefusedError(f"disk {disk.target} is read-only: Cairn's VMs write every disk they have; "
                                     "detach it from the domain first")
        if disk.device == "lun":
            notes.append(f"{disk.target}: a SCSI LUN passed through; it becomes an ordinary disk")
        disks.append(DiskSpec(DISK_NAMES[len(disks)], disk.path, disk.format))
        buses.append(bus)
    nics = []
    for index, element in enumerate(root.iterfind("./devices/interface")):
        nic = f"net{index}"
        mac_element = element.find("mac")
        mac = _mac(mac_element.get("address") if mac_element is not None else None, nic, notes)
        source = element.find("source")
        if element.get("type") == "bridge" and source is not None and source.get("bridge"):
            nics.append(NicSpec(nic, "bridge", mac, bridge=source.get("bridge")))
            continue
        what = (f"libvirt network {source.get('network')!r}" if element.get("type") == "network" and source is not None
                else f"a {element.get('type')} interface")
        notes.append(f"{nic} was on {what}: it gets user-mode networking (a host bridge keeps it on its network)")
        nics.append(NicSpec(nic, "user", mac))
    boot = list(dict.fromkeys(_BOOT[dev] for b in os_.iterfind("boot") if (dev := b.get("dev", "")) in _BOOT))
    spec = VMSpec(
        name=validate_vm_name(name or root.findtext("name") or ""),
        memory_mib=_mib(memory.text or "", memory.get("unit", "KiB")),
        vcpus=int(root.findtext("vcpu", "1")),
        disks=disks,
        kernel=os_.findtext("kernel"), initrd=os_.findtext("initrd"), append=os_.findtext("cmdline"),
        machine=child(os_, "type").get("machine", "q35"),
        profile=_profile(buses, notes),
        nics=nics, cdrom=cdrom,
        boot=[b for b in boot if b != "cdrom" or cdrom] if os_.findtext("kernel") is None else [],
        vnc=root.find("./devices/graphics[@type='vnc']") is not None,
    )
    return Imported(_validated(spec), notes)


# -- a QEMU command line ----------------------------------------------------------------------------

# Options that say nothing a Cairn VM keeps: Cairn sets these itself.
_IGNORED = {"-enable-kvm", "-accel", "-cpu", "-display", "-nographic", "-daemonize", "-monitor", "-serial", "-chardev",
            "-mon", "-qmp", "-pidfile", "-D", "-d", "-nodefaults", "-no-user-config", "-vga", "-usb", "-rtc",
            "-k", "-S", "-no-reboot", "-no-shutdown", "-msg", "-sandbox", "-runas", "-global", "-object", "-uuid",
            "-parallel", "-audiodev", "-device-usb", "-overcommit"}
_FLAGS = {"-enable-kvm", "-nographic", "-daemonize", "-nodefaults", "-no-user-config", "-usb", "-S", "-no-reboot",
          "-no-shutdown"}
_DISK_DEVICES = {"virtio-blk-pci": "virtio", "virtio-blk": "virtio", "ide-hd": "ide", "scsi-hd": "scsi"}
_NIC_MODELS = ("virtio-net-pci", "virtio-net", "e1000", "e1000e", "rtl8139")


def _options(text: str) -> dict[str, str]:
    """QEMU's key=value,... syntax (',,' is a literal comma; a bare first value is `""`)."""
    parts = re.split(r"(?<!,),(?!,)", text)
    found = {}
    for index, part in enumerate(parts):
        key, sep, value = part.partition("=")
        found[key if sep else ("" if index == 0 else key)] = (value if sep else (key if index == 0 else "on")
                                                               ).replace(",,", ",")
    return found


def _last(values: dict[str, list[str]], *options: str, default: str = "", key: str) -> str:
    """The last given value of the first of `options` present: its `key`, or its bare first value
    (`-m 512M` and `-m size=512M` alike)."""
    for option in options:
        if option in values:
            given = _options(values[option][-1])
            return given.get(key) or given.get("") or default
    return default


def _blockdev(text: str) -> dict:
    if text.lstrip().startswith("{"):
        return json.loads(text)
    options = _options(text)
    nested: dict = {}
    for key, value in options.items():
        target = nested
        *path, last = key.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return nested


def from_command_line(command: str | list[str], name: str | None = None) -> Imported:
    """A VMSpec like the QEMU the command line starts (the QEMU must not be running)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    notes: list[str] = []
    values: dict[str, list[str]] = {}
    i = 1 if argv and not argv[0].startswith("-") else 0
    while i < len(argv):
        option = argv[i] if not argv[i].startswith("--") else argv[i][1:]
        # A flag, or an option this parser does not know followed by the next option.
        if option in _FLAGS or i + 1 >= len(argv) or (option not in _KNOWN and argv[i + 1].startswith("-")):
            values.setdefault(option, []).append("")
            i += 1
        else:
            values.setdefault(option, []).append(argv[i + 1])
            i += 2
    for refused in ("-bios", "-pflash"):
        if refused in values:
            raise ImportRefusedError(f"{refused}: Cairn's VMs boot with the machine's BIOS, not given firmware")
    ignored = sorted(o for o in values if o in _IGNORED)
    unknown = sorted(o for o in values if o not in _IGNORED and o not in _KNOWN)
    if ignored:
        notes.append(f"set by Cairn itself, not carried over: {' '.join(ignored)}")
    if unknown:
        notes.append(f"not understood, not carried over: {' '.join(unknown)}")

    disks, buses, cdrom = _command_line_disks(values, notes)
    nics = _command_line_nics(values, notes)
    size = _last(values, "-m", default="128M", key="size")
    sized = re.fullmatch(r"(\d+)([A-Za-z]*)", size)
    if sized is None:
        raise ImportRefusedError(f"-m {size}: give the memory as a whole number and a unit (512M, 2G)")
    amount, unit = sized.groups()
    boot = list(dict.fromkeys({"c": "disk", "d": "cdrom", "n": "network"}[c]
                              for c in _last(values, "-boot", key="order") if c in "cdn"))
    spec = VMSpec(
        name=validate_vm_name(name or _last(values, "-name", key="guest")),
        memory_mib=_mib(amount, unit or "M"),
        vcpus=int(_last(values, "-smp", default="1", key="cpus")),
        disks=disks,
        kernel=values.get("-kernel", [None])[-1], initrd=values.get("-initrd", [None])[-1],
        append=values.get("-append", [None])[-1],
        machine=_last(values, "-machine", "-M", default="q35", key="type"),
        profile=_profile(buses, notes), nics=nics, cdrom=cdrom,
        boot=[b for b in boot if (b != "cdrom" or cdrom) and (b != "network" or nics)]
        if "-kernel" not in values else [],
        vnc="-vnc" in values,
    )
    return Imported(_validated(spec), notes)


_KNOWN = {"-name", "-m", "-smp", "-machine", "-M", "-kernel", "-initrd", "-append", "-drive", "-hda", "-hdb",
          "-hdc", "-hdd", "-cdrom", "-blockdev", "-device", "-netdev", "-nic", "-boot", "-vnc", "-bios", "-pflash"}


def _command_line_disks(values: dict[str, list[str]], notes: list[str]) -> tuple[list[DiskSpec], list[str], str | None]:
    disks: list[DiskSpec] = []
    buses: list[str] = []
    cdrom = values["-cdrom"][-1] if "-cdrom" in values else None

    def add(path: str, fmt: str | None, bus: str) -> None:
        if fmt not in ("qcow2", "raw"):
            raise ImportRefusedError(f"disk {path}: give its format (format=qcow2 or raw); Cairn opens qcow2 and "
                                     "raw images")
        disks.append(DiskSpec(DISK_NAMES[len(disks)], path, fmt))
        buses.append(bus)

    for option in ("-hda", "-hdb", "-hdc", "-hdd"):
        for path in values.get(option, []):
            add(path, None, "ide")
    for drive in map(_options, values.get("-drive", [])):
        if drive.get("media") == "cdrom":
            cdrom = cdrom or drive.get("file")
            continue
        if drive.get("readonly") in ("on", "true"):
            raise ImportRefusedError(f"drive {drive.get('file')} is read-only: Cairn's VMs write every disk they have")
        if "file" not in drive:
            raise ImportRefusedError(f"-drive {drive}: only drives with file=... can be imported")
        add(drive["file"], drive.get("format"), {"virtio": "virtio", "ide": "ide"}.get(drive.get("if", "ide"), "?"))
    nodes = {n["node-name"]: n for n in map(_blockdev, values.get("-blockdev", [])) if "node-name" in n}
    for device in map(_options, values.get("-device", [])):
        model = device.get("")
        if model in _DISK_DEVICES or model == "ide-cd":
            node = nodes.get(device.get("drive", ""))
            if node is None:
                raise ImportRefusedError(f"-device {model} drive={device.get('drive')}: no -blockdev of that name")
            protocol = node["file"] if isinstance(node.get("file"), dict) else nodes.get(node.get("file", ""), node)
            path = protocol.get("filename")
            if model == "ide-cd":
                cdrom = cdrom or path
            elif node.get("read-only") in (True, "on"):
                raise ImportRefusedError(f"disk {path} is read-only: Cairn's VMs write every disk they have")
            else:
                add(path, node.get("driver"), _DISK_DEVICES[model])
    return disks, buses, cdrom


def _command_line_nics(values: dict[str, list[str]], notes: list[str]) -> list[NicSpec]:
    netdevs = {n.get("id"): n for n in map(_options, values.get("-netdev", []))}
    wanted = [(d.get("netdev"), d.get("mac")) for d in map(_options, values.get("-device", []))
              if d.get("") in _NIC_MODELS]
    nics = []
    for index, (netdev_id, mac) in enumerate(wanted):
        nic, netdev = f"net{index}", netdevs.get(netdev_id, {})
        mac = _mac(mac, nic, notes)
        kind = netdev.get("")
        if kind == "bridge":
            nics.append(NicSpec(nic, "bridge", mac, bridge=netdev.get("br", "br0")))
        elif kind == "tap" and netdev.get("ifname"):
            nics.append(NicSpec(nic, "tap", mac, tap=netdev["ifname"]))
        else:
            if kind != "user":
                notes.append(f"{nic}: a {kind or 'unknown'} network backend; it gets user-mode networking")
            nics.append(NicSpec(nic, "user", mac))
    for nic_option in map(_options, values.get("-nic", [])):
        nic = f"net{len(nics)}"
        kind = nic_option.get("")
        mac = _mac(nic_option.get("mac"), nic, notes)
        if kind == "bridge":
            nics.append(NicSpec(nic, "bridge", mac, bridge=nic_option.get("br", "br0")))
        else:
            if kind != "user":
                notes.append(f"{nic}: a {kind} network backend; it gets user-mode networking")
            nics.append(NicSpec(nic, "user", mac))
    return nics


def _validated(spec: VMSpec) -> VMSpec:
    if not spec.disks:
        raise ImportRefusedError(f"VM {spec.name} has no disk Cairn could open")
    spec.validate()
    return spec
