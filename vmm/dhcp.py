"""A DHCP server for one VM network: dnsmasq answering on its bridge, static hosts only.

Every address is reserved in advance (MAC -> IP, from an address pool), so dnsmasq runs with
`static` ranges: a MAC it does not know gets nothing. The hosts are given on dnsmasq's command
line and dnsmasq is restarted when they change, with its leases in memory only: a restarted
dnsmasq has no stale lease that would make it refuse a released address to its next owner
("not using configured address ... because it is leased to ..."), and clients renewing their
reserved address are answered at once (--dhcp-authoritative). No hosts file also means nothing
for dnsmasq to read after it drops root. DNS is off (--port=0).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from .network import Netns, NetworkError, run

STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class StaticHost:
    mac: str
    address: IPv4Address
    hostname: str


@dataclass(frozen=True)
class DhcpConfig:
    interface: str                    # the bridge dnsmasq answers on
    subnet: IPv4Network
    ns: Netns
    router: IPv4Address               # the clients' default route
    lease_seconds: int = 3600


class DhcpServer:
    """The dnsmasq of one network; its pid and log files live in `folder`."""

    def __init__(self, folder: Path, config: DhcpConfig):
        self.folder = folder
        self.config = config

    @property
    def pidfile(self) -> Path:
        return self.folder / "dnsmasq.pid"

    @property
    def log(self) -> Path:
        return self.folder / "dnsmasq.log"

    def pid(self) -> int | None:
        """The running dnsmasq's pid, or None. A pid is ours only if that process carries our
        --pid-file argument (the number may have been reused since)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if os.fsencode(f"--pid-file={self.pidfile}") in argv else None

    def command(self, hosts: Iterable[StaticHost]) -> list[str]:
        c = self.config
        cmd = [*c.ns.exec_prefix(), "dnsmasq",
               "--conf-file=/dev/null",           # never /etc/dnsmasq.conf
               "--port=0",                        # no DNS
               "--bind-interfaces", f"--interface={c.interface}", "--except-interface=lo",
               f"--dhcp-range={c.subnet.network_address},static,{c.subnet.netmask},{c.lease_seconds}",
               "--dhcp-authoritative", "--leasefile-ro", "--log-dhcp",
               f"--log-facility={self.log}", f"--pid-file={self.pidfile}",
               f"--dhcp-option=option:router,{c.router}"]
        cmd += [f"--dhcp-host={h.mac},{h.address},{h.hostname}" for h in hosts]
        return cmd

    def start(self, hosts: Iterable[StaticHost]) -> int:
        """Start dnsmasq (it daemonizes; its parent exits once it is serving, or with the error)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        try:
            run(self.command(hosts))
        except NetworkError as e:
            raise NetworkError(f"dnsmasq did not start on {self.config.interface}: {e}; "
                               f"its log: {self.log}") from e
        pid = self.pid()
        if pid is None:
            raise NetworkError(f"dnsmasq on {self.config.interface} started but is not running; "
                               f"its log: {self.log}")
        return pid

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        while self.pid() is not None:
            if time.monotonic() > deadline:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)

    def restart(self, hosts: Iterable[StaticHost]) -> int:
        self.stop()
        return self.start(hosts)
