"""The VM and backup lists: paged, filtered and sorted in the catalog (the list query of /jobs), with
live VM states from the driver's index of the VMs not stopped, through the API and the CLI."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from catalog_backends import catalog_url  # noqa: F401  (fixture)
from conftest import signed_in_client
from fastapi.testclient import TestClient

from appliance.access.roles import Role
from appliance.backups.records import BackupRecord
from appliance.context import Appliance
from dedup import Store
from vmm.qmp import QMPSession
from vmm.rundir import LIVE_DIR

CAIRN = str(Path(sys.executable).with_name("cairn"))
MiB = 1 << 20


@pytest.fixture
def appliance(appliance_data_dir: Path, catalog_url: str | None) -> Appliance:  # noqa: F811
    """On SQLite, and on PostgreSQL when $CAIRN_TEST_POSTGRES_URL is set."""
    Store.init(appliance_data_dir / "store")
    return Appliance.open(str(appliance_data_dir), catalog_url)


@pytest.fixture
def admin(appliance: Appliance) -> TestClient:
    return signed_in_client(appliance, Role.ADMIN)


def listed(answer, total: int) -> list[str]:
    """The names (VMs) or ids (backups) of a list answer, whose X-Total-Count must be `total`."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-total-count"] == str(total)
    return [item.get("name", item.get("id")) for item in answer.json()]


def kill_qemu(appliance: Appliance, vm: str) -> None:
    os.kill(appliance.vms.show(vm).status.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while appliance.driver.status(vm).state != "crashed":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_vms_are_paged_filtered_and_sorted_with_their_live_state(appliance: Appliance, admin: TestClient):
    for name, memory, vcpus in (("db1", 2048, 4), ("web1", 512, 2), ("web2", 256, 1), ("web3", 256, 1)):
        appliance.vms.create(name, [MiB], memory_mib=memory, vcpus=vcpus)
    asyncio.run(appliance.vms.start("web1", paused=True))
    asyncio.run(appliance.vms.start("web2", paused=True))
    kill_qemu(appliance, "web2")

    def get(**params) -> object:
        return admin.get("/api/v1/vms", params=params)

    assert listed(get(), 4) == ["db1", "web1", "web2", "web3"]
    assert listed(get(limit=2, offset=1), 4) == ["web1", "web2"]
    [paused] = get(filter="state:eq:paused").json()
    assert (paused["name"], paused["state"]) == ("web1", "paused") and paused["pid"] > 0
    assert set(paused) == {"name", "state", "pid", "vcpus", "memory_mib", "disks"}   # the same answer as before
    assert listed(get(filter="state:ne:stopped", sort="-state"), 2) == ["web1", "web2"]
    assert [v["state"] for v in get(filter="state:in:crashed|paused", sort="state").json()] == ["crashed", "paused"]
    assert listed(get(filter="state:eq:stopped"), 2) == ["db1", "web3"]
    assert listed(get(sort="-memory_mib,name"), 4) == ["db1", "web1", "web2", "web3"]
    assert listed(get(filter="vcpus:ge:2"), 2) == ["db1", "web1"]
    assert listed(get(filter="name:contains:WEB", limit=1), 3) == ["web1"]
    assert listed(get(filter="pid:ne:null"), 1) == ["web1"]
    for params, message in (({"filter": "disks:eq:vda"}, "structured data"), ({"sort": "colour"}, "cannot sort by"),
                            ({"filter": "vcpus:gt:many"}, "not a valid int"), ({"limit": 1001}, "not valid")):
        answer = get(**params)
        assert answer.status_code == 422 and message in answer.json()["error"]["message"] + str(
            answer.json()["error"].get("details")), answer.text


def test_backups_are_paged_filtered_sorted_and_the_latest_of_each_vm(appliance: Appliance, admin: TestClient):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [("a1", "a", "ok"), ("b1", "b", "ok"), ("a2", "a", "failed"), ("b2", "b", "ok"), ("a3", "a", "ok")]
    with appliance.catalog.begin() as s:
        s.add_all(BackupRecord(id=backup_id, vm_name=vm, store="s", kind="full", status=status,
                               started_at=start + timedelta(hours=i), notes=[], damage=[])
                  for i, (backup_id, vm, status) in enumerate(rows))

    def get(**params) -> object:
        return admin.get("/api/v1/backups", params=params)

    assert listed(get(), 5) == ["a1", "b1", "a2", "b2", "a3"]   # oldest first, as before
    assert listed(get(sort="-started_at", limit=2), 5) == ["a3", "b2"]
    assert listed(get(sort="-started_at", limit=2, offset=4), 5) == ["a1"]
    assert listed(get(filter="status:eq:failed"), 1) == ["a2"]
    assert listed(get(vm="a", sort="-started_at"), 3) == ["a3", "a2", "a1"]
    assert listed(get(latest="true"), 2) == ["b2", "a3"]
    assert listed(get(latest="true", sort="vm_name", filter="vm_name:ge:b"), 1) == ["b2"]


def test_the_live_index_follows_starts_and_stops(appliance: Appliance):
    """Starts mark a VM live, stops unmark it; a QEMU that quits on its own leaves a marker that
    reads as stopped and goes; a run root from before the index gets one from its pidfiles."""
    driver = appliance.driver
    appliance.vms.create("idle", [MiB])
    assert driver.active() == {}
    asyncio.run(appliance.vms.start("idle", paused=True))
    marker = driver.paths("idle").live_marker
    assert marker.exists() and driver.active()["idle"].state == "paused"
    assert asyncio.run(driver.run_state("idle")) == "prelaunch"   # QEMU -S: no guest code ran
    asyncio.run(appliance.vms.stop("idle", force=True))
    assert not marker.exists() and driver.active() == {}

    asyncio.run(appliance.vms.start("idle", paused=True))

    async def quit_behind_the_drivers_back() -> None:
        async with QMPSession(driver.paths("idle").qmp_socket) as qmp:
            await qmp.execute("quit")
    asyncio.run(quit_behind_the_drivers_back())
    deadline = time.monotonic() + 10
    while driver.status("idle").state != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert marker.exists() and driver.active() == {} and not marker.exists()

    asyncio.run(appliance.vms.start("idle", paused=True))
    for leftover in (driver.run_root / LIVE_DIR).iterdir():
        leftover.unlink()
    (driver.run_root / LIVE_DIR).rmdir()
    assert list(driver.active()) == ["idle"] and marker.exists()


def test_a_vm_created_and_started_paused_in_one_request(admin: TestClient, appliance: Appliance):
    answer = admin.post("/api/v1/vms", json={"name": "quick", "disks": ["1M"], "start": "paused"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "paused"
    assert admin.post("/api/v1/vms/quick/resume").json()["state"] == "running"
    assert admin.post("/api/v1/vms/quick/stop", json={"force": True}).json()["state"] == "stopped"
    assert admin.post("/api/v1/vms/quick/start", json={"paused": True}).json()["state"] == "paused"
    assert admin.post("/api/v1/vms", json={"name": "q2", "start": "later"}).status_code == 422


def test_the_cli_lists_a_page_and_says_so(appliance: Appliance):
    for name in ("v1", "v2", "v3"):
        appliance.vms.create(name, [MiB])
    env = {**os.environ, "CAIRN_DATA_DIR": str(appliance.settings.data_dir),
           "CAIRN_CATALOG_URL": appliance.settings.catalog_url}

    def cairn(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([CAIRN, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc

    page = cairn("vm", "list", "--sort", "-name", "--limit", "2", "--json")
    assert [v["name"] for v in json.loads(page.stdout)] == ["v3", "v2"]
    assert "VMs 1-2 of 3 shown" in page.stderr
    every = cairn("vm", "list", "--filter", "state:eq:stopped", "--json")
    # All of them: no page line (stderr may still say what the start's sweep released of another
    # Cairn process killed on this host, the suite's other tests included).
    assert [v["name"] for v in json.loads(every.stdout)] == ["v1", "v2", "v3"] and " shown" not in every.stderr
    assert json.loads(cairn("backup", "list", "--filter", "status:eq:ok", "--json").stdout) == []
    bad = subprocess.run([CAIRN, "vm", "list", "--filter", "colour:eq:red"], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and "cannot filter 'colour'" in bad.stderr   # invalid input
