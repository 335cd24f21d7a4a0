"""The hosts Cairn's own VMs run on, each as a vmm QemuHost: this machine ("local") and the ssh
hosts, where Cairn's agent runs QEMU (vmm/remote.py).

libvirt hosts are not among them: their domains are libvirt's to run. An ssh host runs a VM
only if it sees the VM's files at the paths the appliance gave them, which is what a compute
pool promises (its hosts mount one shared storage at one path); a host's probe says whether
it does before anything starts there.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable

from appliance.errors import CairnError, ConflictError
from vmm.hosts import HostError
from vmm.placement import LOCAL_HOST
from vmm.qemu import QemuDriver, VMStatus
from vmm.qemu_host import HostProbe, LocalQemuHost, QemuHost, status_from_dict
from vmm.remote import RemoteQemuHost
from vmm.spec import VMSpec

from .service import HostService, host_errors

# Seconds a host gets to accept a connection: one that takes longer counts as not answering.
CONNECT_TIMEOUT = 5.0


class HostPool:
    def __init__(self, hosts: HostService, driver: QemuDriver, connect_timeout: float = CONNECT_TIMEOUT):
        self.hosts = hosts
        self.driver = driver
        self.connect_timeout = connect_timeout

    def host(self, name: str) -> QemuHost:
        """The host `name` as a QemuHost; ConflictError for a libvirt host, NotFoundError for none."""
        if name == LOCAL_HOST:
            return LocalQemuHost(self.driver, LOCAL_HOST)
        view = self.hosts.get(name)
        if view.kind != "ssh":
            raise ConflictError(f"host {name} is a {view.kind} host: its VMs are {view.kind}'s; Cairn runs its "
                                "own VMs here and on ssh hosts")
        return RemoteQemuHost(self.hosts.remote(name, self.connect_timeout), name)

    async def probe(self, names: Iterable[str], spec: VMSpec) -> tuple[dict[str, HostProbe], dict[str, str]]:
        """Ask each host at once whether it could run `spec` now: the answers, and the hosts
        that gave none, with why."""
        probes: dict[str, HostProbe] = {}
        silent: dict[str, str] = {}
        hosts = []
        for name in names:
            try:
                hosts.append(self.host(name))
            except CairnError as err:   # a compute pool naming a host removed since, or a libvirt one
                silent[name] = f"cannot run Cairn's VMs: {err}"
        answers = await asyncio.gather(*(host.probe(spec) for host in hosts), return_exceptions=True)
        for name, answer in zip((host.name for host in hosts), answers, strict=True):
            if isinstance(answer, HostError):
                silent[name] = f"did not answer: {answer}"
            elif isinstance(answer, BaseException):
                raise answer
            else:
                probes[name] = answer
        return probes, silent

    def statuses(self, name: str) -> dict[str, VMStatus]:
        """The VMs the host runs or ran, now (any other is stopped), from a synchronous caller
        (listings); a host that does not answer raises the appliance's HostUnreachableError."""
        if name == LOCAL_HOST:
            return self.driver.active()
        remote = self.hosts.remote(name, self.connect_timeout)
        with host_errors():
            return {v["name"]: status_from_dict(v) for v in remote.call("list")["vms"]}

