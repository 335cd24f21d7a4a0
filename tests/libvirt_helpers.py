"""Test guests as libvirt domains: defining one on the private libvirtd, and reading its disk.

The domain is the test's, not Cairn's (Cairn never defines domains): type='qemu' (TCG, see
vmm.accel), direct kernel boot of the test guest, one qcow2 disk, the serial console in a file.
"""
from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
from guest.build import GuestImage
from guest.harness import BOOT_TIMEOUT, MiB

from vmm import create_disk


@dataclass
class LibvirtGuest:
    dom: libvirt.virDomain
    disk: Path
    serial_log: Path

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


def domain_xml(name: str, image: GuestImage, disk: Path, serial_log: Path, append: str) -> str:
    root = ET.fromstring(f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel/><initrd/><cmdline/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source/><target port='0'/></serial>
    <controller type='usb' model='none'/><memballoon model='none'/>
  </devices>
</domain>""")
    root.find("os/kernel").text = str(image.kernel)
    root.find("os/initrd").text = str(image.initrd)
    root.find("os/cmdline").text = f"console=ttyS0 quiet {append}"
    root.find("devices/disk/source").set("file", str(disk))
    root.find("devices/serial/source").set("path", str(serial_log))
    return ET.tostring(root, encoding="unicode")


@contextmanager
def libvirt_guest(uri: str, name: str, image: GuestImage, workdir: Path, append: str = "cairn.mode=idle",
                  start: bool = True, disk_size: int = 256 * MiB) -> Iterator[LibvirtGuest]:
    """A defined (and, with `start`, booted to READY) domain, destroyed and undefined afterwards."""
    disk, serial_log = workdir / f"{name}-vda.qcow2", workdir / f"{name}-serial.log"
    create_disk(disk, disk_size)
    conn = libvirt.open(uri)
    dom = conn.defineXML(domain_xml(name, image, disk, serial_log, append))
    guest = LibvirtGuest(dom, disk, serial_log)
    try:
        if start:
            dom.create()
            guest.wait_serial("CAIRN: READY")
        yield guest
    finally:
        with suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                          | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        conn.close()


def monitor(dom: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None) -> Any:
    cmd = {"execute": command, **({"arguments": arguments} if arguments else {})}
    answer = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))
    if "error" in answer:
        raise AssertionError(f"{command}: {answer['error']}")
    return answer["return"]


def reference_copy(dom: libvirt.virDomain, target: Path, socket: Path) -> None:
    """What the domain's disk holds right now, read through its QEMU (pause the domain first:
    the qcow2 file read from outside could show stale metadata)."""
    node = next(b["inserted"]["node-name"] for b in monitor(dom, "query-block") if "inserted" in b)
    monitor(dom, "nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(socket)}}})
    try:
        monitor(dom, "block-export-add", {"type": "nbd", "id": "ref", "node-name": node, "name": "ref",
                                          "writable": False})
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd+unix:///ref?socket={socket}",
                        str(target)], check=True, capture_output=True)
        monitor(dom, "block-export-del", {"id": "ref"})
    finally:
        monitor(dom, "nbd-server-stop")
