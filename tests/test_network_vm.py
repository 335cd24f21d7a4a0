"""Real test guests on a Cairn network built in a network namespace: each gets the address its
pool reserved for it from dnsmasq over DHCP (read from its serial console), reaches its peers
over the bridge, and a deleted VM's address goes to the next VM."""
from __future__ import annotations

import asyncio
import subprocess
import time

import pytest
from guest.build import GuestImage
from guest.harness import MiB
from network_helpers import netns  # noqa: F401  (fixture)

from appliance.context import Appliance

SUBNET = "10.77.0.0/24"
GATEWAY = "10.77.0.1"
# udhcpc and ping run after READY, on a TCG guest on a shared machine: be generous.
NET_TIMEOUT = 180


def make_vm(appliance: Appliance, guest: GuestImage, name: str, ping: str) -> str:
    """A stopped test guest attached to network `lan` that pings `ping` once it has its lease;
    returns its reserved address."""
    appliance.vms.create(name, [128 * MiB], kernel=str(guest.kernel), initrd=str(guest.initrd),
                         append=f"console=ttyS0 quiet cairn.net=dhcp cairn.ping={ping}")
    return appliance.vms.networks.attach("lan", name).address


def boot(appliance: Appliance, name: str, address: str, ping: str) -> None:
    asyncio.run(appliance.vms.start(name))
    wait_console(appliance, name, f"CAIRN: NET-UP ip={address} ", "CAIRN: NET-FAILED")
    wait_console(appliance, name, f"CAIRN: PING-OK {ping} ", "CAIRN: PING-FAILED")


def wait_console(appliance: Appliance, name: str, marker: str, failure: str) -> None:
    """Wait for `marker` on the VM's serial console; fail at once on `failure`, showing the
    console and what dnsmasq saw."""
    log = appliance.driver.paths(name).serial_log
    deadline = time.monotonic() + NET_TIMEOUT
    while time.monotonic() < deadline:
        console = log.read_text(errors="replace") if log.exists() else ""
        if marker in console:
            return
        if failure in console:
            break
        time.sleep(0.2)
    dnsmasq = appliance.settings.data_dir / "networks" / "lan" / "dnsmasq.log"
    raise AssertionError(f"{name}: no {marker!r}; console:\n{console[-2000:]}\n"
                         f"dnsmasq:\n{dnsmasq.read_text()[-3000:] if dnsmasq.exists() else ''}")


def ping_from(namespace: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, "ping", "-c", "2", "-W", "5", address],
                          capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_vms_get_their_reserved_addresses_and_reach_peers(appliance: Appliance, guest_kernel: GuestImage,
                                                           netns: str) -> None:  # noqa: F811
    appliance.vms.pools.create_address("lan-pool", SUBNET)
    appliance.vms.networks.create("lan", "lan-pool", netns=netns)

    first = make_vm(appliance, guest_kernel, "net-a", ping=GATEWAY)
    assert first == "10.77.0.2"
    boot(appliance, "net-a", first, GATEWAY)
    # The peer side: the namespace reaches the VM over the bridge too.
    answer = ping_from(netns, first)
    assert answer.returncode == 0, answer.stdout + answer.stderr

    # A second VM gets another address, and reaches the first VM across the bridge.
    second = make_vm(appliance, guest_kernel, "net-b", ping=first)
    assert second == "10.77.0.3"
    boot(appliance, "net-b", second, first)

    # Deleting a VM releases its address: the next VM gets it, and dnsmasq gives it to it
    # although it handed it to net-a's MAC before.
    asyncio.run(appliance.vms.stop("net-a", force=True))
    appliance.vms.delete("net-a")
    assert [a.vm for a in appliance.vms.networks.attachments("lan")] == ["net-b"]
    third = make_vm(appliance, guest_kernel, "net-c", ping=second)
    assert third == first
    boot(appliance, "net-c", third, second)
