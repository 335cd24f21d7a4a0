"""Linux bridges, taps and network namespaces, through iproute2's `ip`.

A VM's NIC on a Cairn network is a persistent tap made in the host namespace before QEMU
starts (QEMU attaches to it by name, `-netdev tap,ifname=...`). Once QEMU runs, plug_tap() moves
the tap into the bridge's namespace, if the bridge is in one, and enslaves it: an open tap can
change namespace (QEMU keeps its file descriptor), but QEMU could not have found it there.
A persistent tap outlives its QEMU, so prepare_tap() clears any earlier one of the same name.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Interface

from .errors import VMError

# The kernel's IFNAMSIZ is 16 bytes with the terminating NUL; netns names become file names.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}\Z")
TAP_PREFIX = "cn"


class NetworkError(VMError):
    """An `ip` command failed; the message carries its own words."""


@dataclass(frozen=True)
class Netns:
    """Where an interface lives: a named network namespace, or the host's own (name None)."""

    name: str | None = None

    def ip(self, *args: str) -> str:
        return run(["ip", *(["-n", self.name] if self.name else []), *args])

    def exec_prefix(self) -> list[str]:
        """Prepended to a command to run it inside this namespace."""
        return ["ip", "netns", "exec", self.name] if self.name else []


def run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise NetworkError(f"{cmd[0]} is not installed (apt-get install iproute2): {e}") from e
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def check_ifname(what: str, name: str) -> str:
    if not isinstance(name, str) or not IFNAME_RE.match(name):
        raise NetworkError(f"invalid {what} {name!r}: use 1-15 characters A-Z a-z 0-9 _ . -")
    return name


def check_netns(name: str) -> str:
    if not isinstance(name, str) or not NETNS_RE.match(name):
        raise NetworkError(f"invalid network namespace name {name!r}: use 1-63 characters "
                           "A-Z a-z 0-9 _ . -")
    return name


def netns_exists(name: str) -> bool:
    return name in run(["ip", "netns", "list"]).split()


def create_netns(name: str) -> Netns:
    run(["ip", "netns", "add", check_netns(name)])
    # Loopback is down in a new namespace; services bound to 127.0.0.1 need it.
    Netns(name).ip("link", "set", "lo", "up")
    return Netns(name)


def delete_netns(name: str) -> None:
    """Removes the namespace; its virtual interfaces (bridges, moved taps) go with it."""
    run(["ip", "netns", "delete", check_netns(name)])


def link_exists(ns: Netns, name: str) -> bool:
    try:
        ns.ip("link", "show", "dev", name)
    except NetworkError:
        return False
    return True


def create_bridge(ns: Netns, name: str, address: IPv4Interface) -> None:
    """A new bridge holding `address` (the DHCP server answers from it), up."""
    check_ifname("bridge name", name)
    ns.ip("link", "add", "name", name, "type", "bridge")
    try:
        ns.ip("address", "add", str(address), "dev", name)
        ns.ip("link", "set", "dev", name, "up")
    except NetworkError:
        delete_link(ns, name)
        raise


def delete_link(ns: Netns, name: str) -> None:
    ns.ip("link", "delete", "dev", name)


def tap_name(vm: str, nic: str) -> str:
    """A stable tap name for a VM's NIC (the same at every start), within IFNAMSIZ."""
    return TAP_PREFIX + hashlib.sha256(f"{vm}/{nic}".encode()).hexdigest()[:12]


def prepare_tap(tap: str, ns: Netns) -> None:
    """A fresh tap in the host namespace for QEMU to attach to; an earlier one goes first."""
    remove_tap(tap, ns)
    Netns().ip("tuntap", "add", "dev", check_ifname("tap name", tap), "mode", "tap")


def remove_tap(tap: str, ns: Netns) -> None:
    """Delete the tap wherever it is (the host namespace or, once plugged, `ns`)."""
    for where in {Netns(), ns}:
        if link_exists(where, tap):
            delete_link(where, tap)


def plug_tap(tap: str, bridge: str, ns: Netns) -> None:
    """Attach a tap that QEMU holds to `bridge` in `ns`, up."""
    if ns.name and not link_exists(ns, tap):
        Netns().ip("link", "set", "dev", tap, "netns", ns.name)
    ns.ip("link", "set", "dev", tap, "master", bridge, "up")
