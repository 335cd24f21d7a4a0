"""Hosts for tests of the host pool: each one a network namespace with its own sshd, all on one
LAN with the appliance (this test process, in the machine's own namespace).

    this namespace: the appliance ── veth ──┐
                                            ├─ bridge "lan", in a switch namespace
    host namespace a: sshd, its QEMUs ─ veth ┤
    host namespace b: ...              ─ veth ┘

The LAN is a /24 among 10.213.0.0-10.250.255.0 that no address or route of the machine uses,
and traffic goes only to the addresses of these namespaces. Namespaces split the network, not
the files, so every host sees the machine's file system: a directory of the lab is the storage
the hosts share, as an NFS export mounted on each would be.

`lab.cut(host)` unplugs a host's cable (its switch port goes down): its sshd and QEMUs run on,
unreachable; `lab.plug(host)` puts it back. At the end every process in the namespaces is
killed and the namespaces are deleted, their veths with them.
"""
from __future__ import annotations

import ipaddress
import os
import random
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from sshd_server import SSHServer, running_sshd

from vmm.network import create_netns, delete_netns, run

SSH_PORT = 2222
QEMU_COMM = "qemu-system-x86"   # /proc/PID/comm: the first 15 characters of the binary's name


@dataclass(frozen=True)
class LabHost:
    name: str
    netns: str
    address: str
    port: str          # its veth's name in the switch namespace
    ssh: SSHServer
    agent_dir: Path    # the agent's directory on the host (installs, run directories)


class HostLab:
    def __init__(self, root: Path, switch: str, hosts: dict[str, LabHost]):
        self.root = root
        self.switch = switch
        self.hosts = hosts
        self.shared = root / "shared"

    def cut(self, host: str) -> None:
        run(["ip", "-n", self.switch, "link", "set", self.hosts[host].port, "down"])

    def plug(self, host: str) -> None:
        run(["ip", "-n", self.switch, "link", "set", self.hosts[host].port, "up"])

    def qemus(self, host: str, vm: str | None = None) -> list[int]:
        """The QEMUs running in the host's namespace (of VM `vm`, if given)."""
        pids = []
        for pid in map(int, run(["ip", "netns", "pids", self.hosts[host].netns]).split()):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() != QEMU_COMM:
                    continue
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue   # it ended meanwhile
            if vm is None or f"guest={vm}".encode() in argv:
                pids.append(pid)
        return pids

    def kill_qemus(self, host: str) -> list[int]:
        pids = self.qemus(host)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for word in (run(["ip", "-4", "route", "show", "table", "all"]) + run(["ip", "-4", "-o", "addr"])).split():
        with suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(213, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError("no free /24 in 10.213-250.x.0 for the host lab")


@contextmanager
def host_lab(names: tuple[str, ...] = ("a", "b")) -> Iterator[HostLab]:
    tag = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"cairn-lab-{tag}-"))
    switch = f"cairn-lab-{tag}-sw"
    net = _free_subnet()
    addresses = list(net.hosts())
    namespaces: list[str] = []
    with ExitStack() as stack:
        try:
            create_netns(switch)
            namespaces.append(switch)
            run(["ip", "-n", switch, "link", "add", "lan", "type", "bridge", "forward_delay", "0"])
            run(["ip", "-n", switch, "link", "set", "lan", "up"])
            # The appliance's cable: this namespace's end gets the LAN's first address.
            uplink = f"cl{tag}"
            run(["ip", "link", "add", uplink, "type", "veth", "peer", "name", "appliance", "netns", switch])
            run(["ip", "-n", switch, "link", "set", "appliance", "master", "lan", "up"])
            run(["ip", "addr", "add", f"{addresses[0]}/{net.prefixlen}", "dev", uplink])
            run(["ip", "link", "set", uplink, "up"])
            hosts = {}
            for index, name in enumerate(names, start=1):
                netns = f"cairn-lab-{tag}-{name}"
                create_netns(netns)
                namespaces.append(netns)
                address = str(addresses[9 + index])
                veth, port = f"c{tag}{index}", f"port-{name}"
                run(["ip", "link", "add", veth, "type", "veth", "peer", "name", port, "netns", switch])
                run(["ip", "link", "set", veth, "netns", netns])
                run(["ip", "-n", netns, "link", "set", veth, "name", "eth0"])
                run(["ip", "-n", netns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0"])
                run(["ip", "-n", netns, "link", "set", "eth0", "up"])
                run(["ip", "-n", switch, "link", "set", port, "master", "lan", "up"])
                ssh = stack.enter_context(running_sshd(address, SSH_PORT, netns))
                hosts[name] = LabHost(name, netns, address, port, ssh, root / name / "agent")
            lab = HostLab(root, switch, hosts)
            lab.shared.mkdir()
            yield lab
        finally:
            stack.close()
            for netns in reversed(namespaces):
                for pid in run(["ip", "netns", "pids", netns]).split():
                    with suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                delete_netns(netns)
            subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture
def lab() -> Iterator[HostLab]:
    with host_lab() as made:
        yield made
