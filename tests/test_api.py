"""The web API over a real appliance: health, VMs, backups, and clear errors on bad input."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.context import Appliance


@pytest.fixture
def appliance(appliance_data_dir: Path) -> Appliance:
    return Appliance.open(str(appliance_data_dir))


@pytest.fixture
def client(api_client: TestClient) -> TestClient:
    return api_client


def test_health_and_openapi(client: TestClient):
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert {"/api/v1/vms", "/api/v1/vms/{name}/backups", "/api/v1/backups"} <= set(paths)


def test_unknown_vm_and_bad_body_get_clear_errors(client: TestClient, appliance: Appliance):
    r = client.get("/api/v1/vms/ghost")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NotFoundError"
    assert "ghost" in r.json()["error"]["message"]
    appliance.vms.create("v1", [32 << 20])
    r = client.post("/api/v1/vms/v1/backups", json={"full": "maybe"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "ValidationError"
    r = client.post("/api/v1/vms/v1/backups", json={"fulll": True})
    assert r.status_code == 422
    r = client.post("/api/v1/vms/v1/backups", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/api/v1/vms/v1/backups", json={"transport": "carrier-pigeon"})
    assert r.status_code == 422
    assert client.get("/api/v1/backups").json() == []


def test_store_errors_caused_by_the_caller_are_not_server_errors(client: TestClient):
    """Names and ids the store refuses or does not know answer 4xx with the store's reason."""
    r = client.post("/api/v1/store/prune", json={"vm": "../etc", "keep_last": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "InvalidNameError"
    r = client.get("/api/v1/backups/nope/disks/vda/files")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = client.patch("/api/v1/vms/ghost", json={"vcpus": 2})
    assert r.status_code == 404


def test_backup_through_the_api(client: TestClient, appliance: Appliance):
    appliance.vms.create("v2", [32 << 20])
    disk = appliance.vms.spec("v2").disks[0].path
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", disk], check=True, capture_output=True)
    assert [v["name"] for v in client.get("/api/v1/vms").json()] == ["v2"]
    r = client.post("/api/v1/vms/v2/backups", json={"full": True})
    assert r.status_code == 202 and r.json()["kind"] == "backup"
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job["state"] == "succeeded", job["error"]
    backup_id = job["result"]["backup_id"]
    b = client.get(f"/api/v1/backups/{backup_id}").json()
    assert b["status"] == "ok" and b["kind"] == "full" and b["bytes_read"] >= 1 << 20
    assert [x["id"] for x in client.get("/api/v1/backups", params={"vm": "v2"}).json()] == [backup_id]
