"""Test guests as libvirt domains: defining one on the private libvirtd, and reading its disks.

The domain is the test's, not Cairn's: type='qemu' (TCG, see vmm.accel), direct kernel boot of
the test guest, the disks a test asks for (qcow2 or raw, files or loop block devices, read-only,
a cdrom), the serial console in a file. libvirt runs its QEMU as libvirt-qemu, so everything
the domain opens lives under the daemon's root (searchable by everyone), not under the test's
tmp_path or /root, where the guest's kernel is cached.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
from guest.build import GuestImage
from guest.harness import BOOT_TIMEOUT, MiB
from libvirtd_server import Libvirtd

from vmm import create_disk


@dataclass(frozen=True)
class DiskDef:
    target: str
    size: int = 256 * MiB
    format: str = "qcow2"     # qcow2 or raw
    # file; block: a loop device over a raw file; network: an NBD export (qemu-nbd) of a raw file
    kind: str = "file"
    device: str = "disk"      # disk or cdrom
    readonly: bool = False
    shareable: bool = False
    data_file: bool = False   # qcow2 whose data lives in a raw file beside it (<file>.data)


QCOW2_VDA = (DiskDef("vda"),)


@dataclass
class LibvirtGuest:
    daemon: Libvirtd
    dom: libvirt.virDomain
    files: dict[str, Path]    # disk -> its image file (a block disk's: the file behind the loop device)
    sources: dict[str, str]   # disk -> what the domain opens (the file, or the loop device)
    serial_log: Path
    workdir: Path
    defs: dict[str, DiskDef] = field(default_factory=dict)

    @property
    def disk(self) -> Path:
        return self.files["vda"]

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, marker: str, timeout: float = BOOT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.serial():
            if not self.dom.isActive():
                raise AssertionError(f"domain {self.dom.name()} stopped waiting for {marker!r}:\n{self.serial()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} within {timeout:g}s:\n{self.serial()[-2000:]}")
            time.sleep(0.1)

    def checkpoints(self) -> list[str]:
        return sorted(c.getName() for c in self.dom.listAllCheckpoints(0))

    def domain_dir(self) -> Path:
        """libvirt's directory of the running domain, as the test sees it."""
        running = self.dom.connect().lookupByName(self.dom.name())   # a handle keeps the id it was looked up with
        return self.daemon.lib_dir / "qemu" / f"domain-{running.ID()}-{self.dom.name()[:20]}"

    def refresh(self) -> None:
        """Look the domain up again (after libvirtd restarted, or the domain was defined anew)."""
        self.dom = libvirt.open(self.daemon.uri).lookupByName(self.dom.name())


def guest_image(daemon: Libvirtd, image: GuestImage) -> GuestImage:
    """The guest's kernel and initramfs where libvirt-qemu can read them."""
    folder = daemon.root / "guest"
    folder.mkdir(exist_ok=True)
    for source in (image.kernel, image.initrd):
        if not (folder / source.name).exists():
            shutil.copy(source, folder / source.name)
    return GuestImage(folder / image.kernel.name, folder / image.initrd.name, image.kernel_package,
                      image.kernel_version)


def domain_xml(name: str, image: GuestImage, disks: dict[DiskDef, str], serial_log: Path, append: str) -> str:
    root = ET.fromstring(f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel/><initrd/><cmdline/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <serial type='file'><source/><target port='0'/></serial>
    <controller type='usb' model='none'/><memballoon model='none'/>
  </devices>
</domain>""")
    root.find("os/kernel").text = str(image.kernel)
    root.find("os/initrd").text = str(image.initrd)
    root.find("os/cmdline").text = f"console=ttyS0 quiet {append}"
    root.find("devices/serial/source").set("path", str(serial_log))
    devices = root.find("devices")
    for index, (d, source) in enumerate(disks.items()):
        disk = ET.Element("disk", type=d.kind, device=d.device)
        ET.SubElement(disk, "driver", name="qemu", type=d.format, **({"cache": "none"} if d.shareable else {}))
        if d.kind == "network":
            nbd = ET.SubElement(disk, "source", protocol="nbd", name=d.target)
            ET.SubElement(nbd, "host", transport="unix", socket=source)
        else:
            ET.SubElement(disk, "source", **{"dev" if d.kind == "block" else "file": source})
        bus = "sata" if d.device == "cdrom" else "virtio"
        ET.SubElement(disk, "target", dev=d.target, bus=bus)
        if d.readonly or d.device == "cdrom":
            ET.SubElement(disk, "readonly")
        if d.shareable:
            ET.SubElement(disk, "shareable")
        devices.insert(index, disk)
    return ET.tostring(root, encoding="unicode")


def _nbd_export(file: Path, name: str, stack: ExitStack) -> str:
    """A unix socket serving `file` as NBD export `name`, which libvirt-qemu may connect to."""
    socket = file.with_suffix(".sock")
    server = subprocess.Popen(["qemu-nbd", "--format=raw", f"--export-name={name}", f"--socket={socket}",
                               "--persistent", "--shared=8", str(file)])
    stack.callback(server.wait)
    stack.callback(server.kill)
    deadline = time.monotonic() + 30
    while not socket.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"qemu-nbd did not serve {file}")
        time.sleep(0.05)
    socket.chmod(0o777)
    return str(socket)


def _loop_device(file: Path, stack: ExitStack) -> str:
    device = subprocess.run(["losetup", "--find", "--show", str(file)], check=True, capture_output=True,
                            text=True).stdout.strip()
    stack.callback(subprocess.run, ["losetup", "--detach", device], check=False)
    return device


@contextmanager
def libvirt_guest(daemon: Libvirtd, name: str, image: GuestImage, append: str = "cairn.mode=idle",
                  start: bool = True, disks: tuple[DiskDef, ...] = QCOW2_VDA) -> Iterator[LibvirtGuest]:
    """A defined (and, with `start`, booted to READY) domain, destroyed and undefined afterwards.
    Read-only disks and cdroms are filled with random data first; the others start blank."""
    workdir = daemon.root / "domains" / name
    workdir.mkdir(parents=True)
    workdir.chmod(0o755)
    serial_log = workdir / "serial.log"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        files, sources = {}, {}
        for d in disks:
            file = workdir / f"{d.target}.{d.format if d.device == 'disk' else 'iso'}"
            if d.data_file:
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                f"data_file={file}.data,data_file_raw=on", str(file), str(d.size)], check=True)
                # libvirt 9.0 knows nothing of data files, so it does not label this one: the admin
                # gives it to the QEMU user.
                qemu = pwd.getpwnam("libvirt-qemu")
                os.chown(f"{file}.data", qemu.pw_uid, qemu.pw_gid)
            elif d.format == "qcow2":
                create_disk(file, d.size)
            else:
                with file.open("wb") as f:
                    f.truncate(d.size)
                    if d.readonly or d.device == "cdrom":
                        f.write(os.urandom(min(d.size, 4 * MiB)))
            files[d.target] = file
            if d.kind == "block":
                sources[d.target] = _loop_device(file, stack)
            elif d.kind == "network":
                sources[d.target] = _nbd_export(file, d.target, stack)
            else:
                sources[d.target] = str(file)
        conn = libvirt.open(daemon.uri)
        stack.callback(conn.close)
        dom = conn.defineXML(domain_xml(name, guest_image(daemon, image),
                                        {d: sources[d.target] for d in disks}, serial_log, append))
        guest = LibvirtGuest(daemon, dom, files, sources, serial_log, workdir, {d.target: d for d in disks})
        stack.callback(_undefine, guest)
        if start:
            dom.create()
            guest.wait_serial("CAIRN: READY")
        yield guest


def _undefine(guest: LibvirtGuest) -> None:
    conn = libvirt.open(guest.daemon.uri)
    try:
        dom = conn.lookupByName(guest.dom.name())
    except libvirt.libvirtError:
        return
    with suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with suppress(libvirt.libvirtError):
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    conn.close()


def monitor(dom: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None) -> Any:
    cmd = {"execute": command, **({"arguments": arguments} if arguments else {})}
    answer = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))
    if "error" in answer:
        raise AssertionError(f"{command}: {answer['error']}")
    return answer["return"]


def _nodes(dom: libvirt.virDomain) -> dict[str, str]:
    """disk -> its top block node in the running QEMU, found through its device alias."""
    aliases = {d.find("target").get("dev"): d.find("alias").get("name")
               for d in ET.fromstring(dom.XMLDesc(0)).iterfind("./devices/disk") if d.find("alias") is not None}
    by_device = {}
    for entry in monitor(dom, "query-block"):
        if "inserted" in entry:
            qdev = entry.get("qdev", "")
            device = qdev.split("/")[3] if qdev.startswith("/machine/peripheral/") else qdev
            by_device[device] = entry["inserted"]["node-name"]
    return {disk: by_device[alias] for disk, alias in aliases.items() if alias in by_device}


def reference_copies(guest: LibvirtGuest, folder: Path, disks: list[str] | None = None) -> dict[str, Path]:
    """What the domain's disks hold right now, read through its QEMU (pause the domain first:
    an image read from outside could show stale metadata): disk -> a raw copy in `folder`."""
    dom, nodes = guest.dom, _nodes(guest.dom)
    socket = guest.domain_dir() / "ref.sock"
    # QEMU (as libvirt-qemu) creates the socket: in the domain's directory, which it may write.
    monitor(dom, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(socket).replace(
        str(guest.daemon.lib_dir), "/var/lib/libvirt", 1)}}})
    copies = {}
    try:
        for disk in disks or [d for d in guest.files if d in nodes and guest.defs[d].device == "disk"]:
            monitor(dom, "block-export-add", {"type": "nbd", "id": f"ref-{disk}", "node-name": nodes[disk],
                                              "name": disk, "writable": False})
            copies[disk] = folder / f"ref-{disk}.raw"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd+unix:///{disk}?socket={socket}",
                            str(copies[disk])], check=True, capture_output=True)
            monitor(dom, "block-export-del", {"id": f"ref-{disk}"})
    finally:
        monitor(dom, "nbd-server-stop")
    return copies


def reference_copy(guest: LibvirtGuest, target: Path) -> None:
    """vda's reference copy at `target`."""
    shutil.move(reference_copies(guest, target.parent, ["vda"])["vda"], target)
