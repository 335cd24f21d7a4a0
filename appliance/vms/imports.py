"""`cairn vm import`: take over a VM that libvirt or a bare QEMU ran, so Cairn runs it from now
on. Its disks stay where they are (deleting the Cairn VM later leaves them there too: only
folders Cairn made are removed).

The VM must be stopped: two QEMUs writing one image destroy it. Each disk is opened the way
QEMU does before it starts (`qemu-img info` without sharing), so an image a running QEMU holds
is refused, and its format must be the one the definition says. A network disk (an RBD image,
an NBD export) is only reached: it is raw, and its server decides who may write it. A libvirt domain stays defined
in libvirt unless `undefine` is asked for; the notes say so.
"""
from __future__ import annotations

import json
import subprocess
from urllib.parse import urlsplit

from appliance.errors import ConflictError, NotFoundError
from appliance.hosts.service import HostCommandError, HostService, host_errors
from vmm.errors import ImageError
from vmm.imports import Imported, from_command_line, from_domain
from vmm.network_disks import is_network, probe

from .records import VMRecord
from .service import VMService


def _check_disks(imported: Imported) -> None:
    for disk in imported.spec.disks:
        if is_network(disk.path):
            # Raw by definition (vmm.network_disks): reached, never probed; its server arbitrates writers.
            try:
                probe(disk.path)
            except ImageError as err:
                raise NotFoundError(f"disk {disk.path} cannot be opened: {err}") from None
            continue
        done = subprocess.run(["qemu-img", "info", "--output=json", disk.path], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            reason = done.stderr.strip()
            if "lock" in reason:
                raise ConflictError(f"disk {disk.path} is in use by a running QEMU: stop the VM first ({reason})")
            raise NotFoundError(f"disk {disk.path} cannot be opened: {reason}")
        found = json.loads(done.stdout)["format"]
        if found != disk.format:
            raise ConflictError(f"disk {disk.path} holds {found}, not {disk.format} as the VM's definition says")


class VMImports:
    def __init__(self, vms: VMService, hosts: HostService):
        self.vms = vms
        self.hosts = hosts

    def from_libvirt(self, host: str, domain: str, name: str | None = None, undefine: bool = False) -> Imported:
        """The stopped domain as a Cairn VM; `undefine` then removes it from libvirt (not its disks)."""
        view = self.hosts.get(host)
        if view.kind != "libvirt" or urlsplit(view.uri).hostname:
            raise HostCommandError(f"host {host} is not a libvirt on this machine: an imported VM's disks must be "
                                   "files or devices here")
        libvirt = self.hosts.libvirt(host)
        with host_errors():
            state = libvirt.info(domain).state
            if state != "stopped":
                raise ConflictError(f"domain {domain} is {state}: shut it down before Cairn takes it over")
            imported = from_domain(libvirt.definition(domain), name)
        self._add(imported)
        if undefine:
            with host_errors():
                libvirt.undefine(domain)
            imported.notes.append(f"domain {domain} was undefined in libvirt (its disks stay)")
        else:
            imported.notes.append(f"domain {domain} stays defined in libvirt: do not start it there while Cairn runs "
                                  "it (undefine it, or import with --undefine)")
        return imported

    def from_command_line(self, command: str | list[str], name: str | None = None) -> Imported:
        """The VM a QEMU command line starts (that QEMU must not be running) as a Cairn VM."""
        imported = from_command_line(command, name)
        self._add(imported)
        return imported

    def _add(self, imported: Imported) -> None:
        spec = imported.spec
        with self.vms.catalog() as s:
            if s.get(VMRecord, spec.name):
                raise ConflictError(f"VM {spec.name} already exists: import it under another name")
        _check_disks(imported)
        with self.vms.catalog.begin() as s:
            if s.get(VMRecord, spec.name):
                raise ConflictError(f"VM {spec.name} already exists: import it under another name")
            s.add(VMRecord(name=spec.name, spec=spec.to_dict()))
