"""/api/v1/pools and /api/v1/networks: create, list, delete, attach and detach VMs, with clear
errors that change nothing. Networks are built in a network namespace; no VM is started here
(tests/test_network_vm.py boots guests on them)."""
from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient
from job_helpers import job_result
from network_helpers import netns  # noqa: F401  (fixture)

from appliance.context import Appliance
from vmm.network import Netns, link_exists


def dnsmasq_argv(appliance: Appliance, network: str) -> list[str]:
    folder = appliance.settings.data_dir / "networks" / network
    pid = (folder / "dnsmasq.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def error(answer, status: int, text: str) -> None:
    assert answer.status_code == status, answer.text
    assert text in answer.json()["error"]["message"], answer.text


def test_pools_api(api_client: TestClient, tmp_path: Path) -> None:
    made = api_client.post("/api/v1/pools", json={"kind": "address", "name": "lan", "subnet": "10.70.0.0/28"})
    assert made.status_code == 201, made.text
    assert made.json() == {"kind": "address", "name": "lan", "subnet": "10.70.0.0/28", "gateway": "10.70.0.1",
                           "first": "10.70.0.2", "last": "10.70.0.14", "size": 13}
    assert api_client.post("/api/v1/pools", json={"kind": "compute", "name": "here", "hosts": ["local"]}).status_code == 201
    assert api_client.post("/api/v1/pools", json={"kind": "storage", "name": "disks", "type": "dir",
                                                  "path": str(tmp_path)}).status_code == 201
    assert [(p["kind"], p["name"]) for p in api_client.get("/api/v1/pools").json()] == [
        ("compute", "here"), ("storage", "disks"), ("address", "lan")]
    assert [p["name"] for p in api_client.get("/api/v1/pools?kind=storage").json()] == ["disks"]

    lease = api_client.post("/api/v1/pools/address/lan/leases", json={"owner": "router"})
    assert lease.status_code == 201 and lease.json()["address"] == "10.70.0.2"
    assert api_client.get("/api/v1/pools/address/lan").json()["leases"] == [lease.json()]
    error(api_client.delete("/api/v1/pools/address/lan"), 409, "1 addresses handed out (to router)")
    assert api_client.delete("/api/v1/pools/address/lan/leases/10.70.0.2").status_code == 204
    error(api_client.delete("/api/v1/pools/address/lan/leases/10.70.0.2"), 404, "is not handed out")

    # Bad input: clear errors, nothing changed.
    error(api_client.post("/api/v1/pools", json={"kind": "address", "name": "x", "subnet": "10.70.0.0/24"}),
          409, "overlaps pool lan")
    error(api_client.post("/api/v1/pools", json={"kind": "address", "name": "x", "subnet": "300.1.0.0/24"}),
          400, "address pool x:")
    error(api_client.post("/api/v1/pools", json={"kind": "storage", "name": "nas", "type": "nfs",
                                                 "path": str(tmp_path)}), 400, "is not a mount point")
    error(api_client.post("/api/v1/pools", json={"kind": "compute", "name": "far", "hosts": ["mars"]}),
          404, "no hosts named mars")
    assert api_client.post("/api/v1/pools", json={"kind": "moon", "name": "x"}).status_code == 422
    assert api_client.post("/api/v1/pools", json={"kind": "address", "name": "x", "subnet": "10.9.0.0/24",
                                                  "color": "red"}).status_code == 422
    error(api_client.get("/api/v1/pools/compute/nope"), 404, "no compute pool named nope")
    assert api_client.get("/api/v1/pools/planet/x").status_code == 422
    assert len(api_client.get("/api/v1/pools").json()) == 3

    # A VM's disks go in the pool it names.
    assert api_client.post("/api/v1/vms", json={"name": "pooled", "disks": ["64M"],
                                                "storage_pool": "disks"}).status_code == 201
    assert (tmp_path / "pooled" / "vda.qcow2").is_file()
    error(api_client.post("/api/v1/vms", json={"name": "lost", "disks": ["64M"], "storage_pool": "nope"}),
          404, "no storage pool named nope")
    error(api_client.delete("/api/v1/pools/storage/disks"), 409, "holds disks of VMs pooled")
    assert api_client.delete("/api/v1/vms/pooled").status_code == 200
    assert not (tmp_path / "pooled").exists()

    for kind, name in (("compute", "here"), ("storage", "disks"), ("address", "lan")):
        assert api_client.delete(f"/api/v1/pools/{kind}/{name}").status_code == 204
    assert api_client.get("/api/v1/pools").json() == []
    assert tmp_path.is_dir()  # forgetting a storage pool leaves its folder


def test_networks_api_attach_detach_and_delete(api_client: TestClient, appliance: Appliance,
                                               netns: str) -> None:  # noqa: F811
    assert api_client.post("/api/v1/pools", json={"kind": "address", "name": "lan-pool",
                                                  "subnet": "10.71.0.0/24"}).status_code == 201
    made = api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "lan-pool", "netns": netns})
    assert made.status_code == 201, made.text
    network = made.json()
    assert (network["bridge"], network["netns"], network["gateway"]) == ("cbr-lan", netns, "10.71.0.1")
    assert network["bridge_present"] and network["dhcp_pid"]
    ns = Netns(netns)
    assert "10.71.0.1/24" in ns.ip("-4", "address", "show", "dev", "cbr-lan")
    assert not link_exists(Netns(), "cbr-lan")  # nothing on the host's own interfaces

    # Two VMs, two addresses; each NIC's MAC is reserved in dnsmasq.
    for vm in ("web1", "web2"):
        assert api_client.post("/api/v1/vms", json={"name": vm, "disks": ["64M"]}).status_code == 201
    first = api_client.post("/api/v1/networks/lan/attachments", json={"vm": "web1"}).json()
    second = api_client.post("/api/v1/networks/lan/attachments", json={"vm": "web2"}).json()
    assert (first["address"], second["address"]) == ("10.71.0.2", "10.71.0.3")
    (nic,) = appliance.vms.spec("web1").nics
    assert (nic.name, nic.mode, nic.mac, nic.tap) == ("net0", "tap", first["mac"], first["tap"])
    argv = dnsmasq_argv(appliance, "lan")
    assert f"--dhcp-host={first['mac']},10.71.0.2,web1-net0" in argv
    assert f"--dhcp-host={second['mac']},10.71.0.3,web2-net0" in argv
    assert [a["vm"] for a in api_client.get("/api/v1/networks/lan").json()["attachments"]] == ["web1", "web2"]
    # A clone is on the same network with its own MAC, tap and address.
    job_result(api_client, api_client.post("/api/v1/vms/web2/clones", json={"names": ["web2-copy"]}))
    (copy,) = api_client.get("/api/v1/networks/lan/attachments").json()[2:]
    assert (copy["vm"], copy["nic"], copy["address"]) == ("web2-copy", "net0", "10.71.0.4")
    assert copy["mac"] != second["mac"] and copy["tap"] != second["tap"]
    assert f"--dhcp-host={copy['mac']},10.71.0.4,web2-copy-net0" in dnsmasq_argv(appliance, "lan")
    assert api_client.delete("/api/v1/vms/web2-copy").status_code == 200

    # Errors change nothing.
    error(api_client.post("/api/v1/networks/lan/attachments", json={"vm": "ghost"}), 404, "no VM named ghost")
    error(api_client.post("/api/v1/networks/moon/attachments", json={"vm": "web1"}), 404, "no network named moon")
    error(api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "lan-pool", "netns": netns}),
          409, "already exists")
    error(api_client.post("/api/v1/networks", json={"name": "lan2", "address_pool": "lan-pool", "netns": netns}),
          409, "already the pool of network lan")
    error(api_client.post("/api/v1/networks", json={"name": "lan2", "address_pool": "nope", "netns": netns}),
          404, "no address pool named nope")
    error(api_client.post("/api/v1/networks", json={"name": "lan2", "address_pool": "lan-pool",
                                                    "netns": "cairn-no-such-ns"}), 404, "no network namespace")
    error(api_client.post("/api/v1/networks", json={"name": "lan2", "address_pool": "lan-pool",
                                                    "bridge": "a-bridge-name-too-long"}), 400, "invalid bridge name")
    error(api_client.delete("/api/v1/networks/lan"), 409, "VMs attached: web1, web2")
    error(api_client.delete("/api/v1/pools/address/lan-pool"), 409, "pool of network lan")
    assert [n["name"] for n in api_client.get("/api/v1/networks").json()] == ["lan"]
    assert len(api_client.get("/api/v1/networks/lan/attachments").json()) == 2

    # Deleting a VM releases its address; detaching another releases its own and its NIC.
    assert api_client.delete("/api/v1/vms/web1").status_code == 200
    assert [lease["owner"] for lease in api_client.get("/api/v1/pools/address/lan-pool/leases").json()] == ["web2"]
    assert not any(first["mac"] in a for a in dnsmasq_argv(appliance, "lan"))
    detached = api_client.delete("/api/v1/networks/lan/attachments/web2")
    assert detached.status_code == 200 and detached.json()[0]["address"] == "10.71.0.3"
    assert appliance.vms.spec("web2").nics == []
    error(api_client.delete("/api/v1/networks/lan/attachments/web2"), 404, "not attached to network lan")
    assert api_client.get("/api/v1/pools/address/lan-pool/leases").json() == []

    dhcp_pid = api_client.get("/api/v1/networks/lan").json()["dhcp_pid"]
    assert api_client.delete("/api/v1/networks/lan").status_code == 204
    assert not link_exists(ns, "cbr-lan")
    assert not Path(f"/proc/{dhcp_pid}/cmdline").exists() or not Path(f"/proc/{dhcp_pid}/cmdline").read_bytes()
    assert api_client.get("/api/v1/networks").json() == []


def test_a_network_whose_bridge_exists_is_refused_and_leaves_it(api_client: TestClient, netns: str) -> None:  # noqa: F811
    Netns(netns).ip("link", "add", "name", "taken0", "type", "bridge")
    assert api_client.post("/api/v1/pools", json={"kind": "address", "name": "p", "subnet": "10.72.0.0/24"}).status_code == 201
    error(api_client.post("/api/v1/networks", json={"name": "n", "address_pool": "p", "bridge": "taken0",
                                                    "netns": netns}), 409, "an interface taken0 exists already")
    assert link_exists(Netns(netns), "taken0")
    assert api_client.get("/api/v1/networks").json() == []


def test_a_network_whose_dhcp_server_fails_leaves_nothing(api_client: TestClient, netns: str, tmp_path: Path,  # noqa: F811
                                                          monkeypatch) -> None:
    assert api_client.post("/api/v1/pools", json={"kind": "address", "name": "p", "subnet": "10.74.0.0/24"}).status_code == 201
    # A PATH with `ip` but no dnsmasq: the bridge is made, then dnsmasq cannot start. Only for
    # the request: the netns fixture's cleanup needs `ip` after tmp_path is gone.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ip").symlink_to(shutil.which("ip"))
    with monkeypatch.context() as only_ip:
        only_ip.setenv("PATH", str(tmp_path / "bin"))
        error(api_client.post("/api/v1/networks", json={"name": "n", "address_pool": "p", "netns": netns}),
              400, "dnsmasq did not start on cbr-n")
    assert api_client.get("/api/v1/networks").json() == []
    assert not link_exists(Netns(netns), "cbr-n")


def test_a_failed_start_leaves_no_tap(api_client: TestClient, appliance: Appliance, netns: str,  # noqa: F811
                                      tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel")
    appliance.vms.create("broken", [64 << 20], kernel=str(kernel))
    appliance.vms.pools.create_address("p", "10.75.0.0/24")
    appliance.vms.networks.create("n", "p", netns=netns)
    tap = appliance.vms.networks.attach("n", "broken").tap
    kernel.unlink()
    error(api_client.post("/api/v1/vms/broken/start"), 400, "does not exist")
    assert not link_exists(Netns(), tap) and not link_exists(Netns(netns), tap)
    # The network is untouched and still serving.
    assert api_client.get("/api/v1/networks/n").json()["dhcp_pid"]
