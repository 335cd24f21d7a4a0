"""Turn a VMSpec into a QEMU command line."""

from __future__ import annotations

import json
import os
import stat

from .accel import Accel
from .network_disks import network_disk
from .profiles import get_profile, ide_addresses
from .rundir import RunDir
from .spec import CDROM_NODE, DiskSpec, NicSpec, VMSpec

QMP_CHARDEV = "qmp"
SERIAL_CHARDEV = "serial0"
GUEST_AGENT_CHARDEV = "qga0"
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"   # the port name qemu-ga looks for


def qemu_opt(value: str) -> str:
    """Escape a value for QEMU's key=value,... option syntax, where ',,' is a literal comma."""
    return value.replace(",", ",,")


def build_command(binary: str, spec: VMSpec, accel: Accel, rundir: RunDir, incoming: str | None = None) -> list[str]:
    cmd = [
        binary,
        "-name", f"guest={spec.name}",
        "-machine", spec.machine,
        *accel.qemu_args(),
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-chardev", f"file,id={SERIAL_CHARDEV},path={qemu_opt(str(rundir.serial_log))}",
        "-serial", f"chardev:{SERIAL_CHARDEV}",
        "-chardev", (f"socket,id={QMP_CHARDEV},path={qemu_opt(str(rundir.qmp_socket))},"
                     "server=on,wait=off"),
        "-mon", f"chardev={QMP_CHARDEV},mode=control",
        "-daemonize",
        "-pidfile", str(rundir.pidfile),
        # Once up, a daemonized QEMU points stderr at /dev/null, or at the -D log file if
        # there is one. Naming our stderr file here (QEMU truncates it when it opens it, early
        # in startup) keeps later messages too, e.g. "terminating on signal 15 from pid N".
        "-D", str(rundir.qemu_log),
    ]
    if spec.kernel is not None:
        cmd += ["-kernel", spec.kernel]
    if spec.initrd is not None:
        cmd += ["-initrd", spec.initrd]
    if spec.append is not None:
        cmd += ["-append", spec.append]
    profile = get_profile(spec.profile)
    boot_index = {device: index for index, device in enumerate(spec.boot, start=1)}
    ide_slots = iter(ide_addresses(spec.machine))
    for position, disk in enumerate(spec.disks):
        # JSON syntax: no escaping issues whatever the image path contains.
        cmd += ["-blockdev", json.dumps(protocol_node(disk))]
        cmd += ["-blockdev", json.dumps({
            "driver": disk.format, "file": disk.protocol_node(), "node-name": disk.format_node()})]
        # share-rw=on lets other users of the node (HMP qemu-io, block jobs' writers) write
        # while the guest device is attached.
        device = (f"{profile.disk_device},drive={disk.format_node()},id={disk.device_id()},"
                  "share-rw=on")
        if profile.disk_device.startswith("ide-"):
            device += "," + next(ide_slots)
        cmd += ["-device", device + _boot_index(boot_index, "disk", position)]
    if spec.cdrom is not None:
        cmd += ["-blockdev", json.dumps({
            "driver": "file", "filename": spec.cdrom, "node-name": f"{CDROM_NODE}-file",
            "read-only": True})]
        cmd += ["-blockdev", json.dumps({
            "driver": "raw", "file": f"{CDROM_NODE}-file", "node-name": CDROM_NODE,
            "read-only": True})]
        cmd += ["-device", f"{profile.cdrom_device},drive={CDROM_NODE},id={CDROM_NODE}-dev,"
                           + next(ide_slots) + _boot_index(boot_index, "cdrom", 0)]
    for position, nic in enumerate(spec.nics):
        cmd += ["-netdev", _netdev(nic)]
        cmd += ["-device", f"{nic.model or profile.nic_model},netdev={nic.netdev_id()},id={nic.name},"
                           f"mac={nic.mac}" + _boot_index(boot_index, "network", position)]
    if spec.vnc:
        # The password is set through QMP after start (set_password), never on the command
        # line, where any local user could read it in /proc.
        cmd += ["-vga", "std",
                "-vnc", f"unix:{qemu_opt(str(rundir.vnc_socket))},password=on"]
    cmd += _guest_agent_channel(rundir)
    if incoming is not None:
        cmd += ["-incoming", incoming]
    return cmd


def protocol_node(disk: DiskSpec) -> dict[str, object]:
    """The -blockdev options of the disk's protocol node: a file, a block device or a network disk."""
    if (remote := network_disk(disk.path)) is not None:
        return {**remote.blockdev(disk.protocol_node()), "cache": {"direct": False}}
    return {"driver": protocol_driver(disk.path), "filename": disk.path, "node-name": disk.protocol_node(),
            "cache": {"direct": False}}


def protocol_driver(path: str) -> str:
    """QEMU opens a block device (an LVM volume, a LUN, a loop device) with host_device and
    refuses it with "file", which takes regular files only."""
    try:
        return "host_device" if stat.S_ISBLK(os.stat(path).st_mode) else "file"
    except OSError:
        return "file"   # QEMU says what is wrong with the path


def _guest_agent_channel(rundir: RunDir) -> list[str]:
    """A virtio-serial port for the QEMU guest agent (backups freeze the guest's filesystems
    through it). A guest without an agent never opens it, which QMP's query-chardev shows."""
    return ["-chardev", (f"socket,id={GUEST_AGENT_CHARDEV},path={qemu_opt(str(rundir.guest_agent_socket))},"
                        "server=on,wait=off"),
            "-device", "virtio-serial-pci,id=guest-agent-serial",
            "-device", (f"virtserialport,bus=guest-agent-serial.0,chardev={GUEST_AGENT_CHARDEV},"
                       f"name={GUEST_AGENT_PORT}")]


def _boot_index(boot_index: dict[str, int], kind: str, position: int) -> str:
    """Only the first device of each kind is bootable: that is what a boot order names."""
    if position != 0 or kind not in boot_index:
        return ""
    return f",bootindex={boot_index[kind]}"


def _netdev(nic: NicSpec) -> str:
    if nic.mode == "tap":
        # The tap exists already; QEMU must not run /etc/qemu-ifup scripts on it.
        return f"tap,id={nic.netdev_id()},ifname={nic.tap},script=no,downscript=no"
    if nic.mode == "bridge":
        return f"bridge,id={nic.netdev_id()},br={nic.bridge}"
    return f"user,id={nic.netdev_id()}"
