"""Policies as API resources: create, read, replace, preview, tags, and clear errors on bad input."""
from __future__ import annotations

from datetime import datetime

from backup_helpers import MiB
from fastapi.testclient import TestClient

from appliance.context import Appliance

NIGHTLY = {"kind": "backup", "name": "nightly", "schedule": "0 2 * * *", "vms": ["web*"], "full_every": 7,
           "retention": {"keep_daily": 7, "keep_weekly": 4}, "max_per_host": 2}


def test_policy_crud_preview_and_tags(api_client: TestClient, appliance: Appliance):
    for name in ("web1", "web2", "db1"):
        appliance.vms.create(name, [8 * MiB])
    created = api_client.post("/api/v1/policies", json=NIGHTLY)
    assert created.status_code == 201
    body = created.json()
    assert body["policy"]["retention"]["keep_weekly"] == 4 and body["scheduled_until"] is None
    assert api_client.get(f"/api/v1/policies/{body['id']}").json() == body
    assert api_client.get("/api/v1/policies/nightly").json() == body

    preview = api_client.get("/api/v1/policies/nightly/preview", params={"count": 3}).json()
    runs = [datetime.fromisoformat(t) for t in preview["next_runs"]]
    assert len(runs) == 3 and all(t.hour == 2 and t.minute == 0 for t in runs)
    assert preview["vms"] == {"web1": "full", "web2": "full"}

    assert api_client.put("/api/v1/vms/db1/tags", json=["prod", "db"]).json() == ["db", "prod"]
    assert api_client.get("/api/v1/vms/db1/tags").json() == ["db", "prod"]
    snap = {"kind": "snapshot", "name": "hourly-snap", "schedule": "@hourly", "tags": ["prod"], "keep": 3}
    assert api_client.post("/api/v1/policies", json=snap).status_code == 201
    assert api_client.get("/api/v1/policies/hourly-snap/preview").json()["vms"] == {"db1": "snapshot"}

    replaced = api_client.put("/api/v1/policies/nightly", json={**NIGHTLY, "vms": ["db1"], "enabled": False}).json()
    assert replaced["id"] == body["id"] and replaced["policy"]["vms"] == ["db1"]
    assert api_client.get("/api/v1/policies/nightly/preview").json()["next_runs"] == [], "disabled: no runs"

    listed = api_client.get("/api/v1/policies", params={"filter": "kind:eq:snapshot"})
    assert [p["policy"]["name"] for p in listed.json()] == ["hourly-snap"] and listed.headers["x-total-count"] == "1"
    names = [p["policy"]["name"] for p in api_client.get("/api/v1/policies", params={"sort": "-name"}).json()]
    assert names == ["nightly", "hourly-snap"]


def test_bad_policies_are_refused_with_the_reason(api_client: TestClient, appliance: Appliance):
    def error(body: dict, status: int = 422) -> str:
        r = api_client.post("/api/v1/policies", json=body)
        assert r.status_code == status, r.json()
        return str(r.json()["error"])

    assert "cron" in error({**NIGHTLY, "schedule": "at two"})
    assert "cron" in error({**NIGHTLY, "schedule": "* * * * * *"}), "no seconds field"
    assert "never fires" in error({**NIGHTLY, "schedule": "0 0 30 2 *"})
    assert "selects VMs" in error({**NIGHTLY, "vms": []})
    assert "no keep rule" in error({**NIGHTLY, "retention": {}})
    assert "full_every" in error({**NIGHTLY, "full_every": -1})
    assert "kind" in error({**NIGHTLY, "kind": "archive"})
    assert "keep" in error({"kind": "snapshot", "name": "s", "schedule": "@daily", "vms": ["*"], "keep": 0})
    assert "name" in error({**NIGHTLY, "name": "../etc"})
    assert "colour" in error({**NIGHTLY, "colour": "blue"})
    assert api_client.post("/api/v1/policies", json=NIGHTLY).status_code == 201
    assert "already exists" in error(NIGHTLY, 409)
    assert api_client.get("/api/v1/policies/ghost").status_code == 404
    assert api_client.get("/api/v1/policies/nightly/preview", params={"count": 0}).status_code == 422
    assert api_client.put("/api/v1/vms/ghost/tags", json=["x"]).status_code == 404
    assert api_client.put("/api/v1/vms/ghost/tags", json=["bad tag"]).status_code == 422
    assert [p["policy"]["name"] for p in api_client.get("/api/v1/policies").json()] == ["nightly"], \
        "nothing half-made by the refusals"
