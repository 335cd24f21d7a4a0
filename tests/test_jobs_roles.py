"""The role a job needs comes from its plan (JobPlan.needs), whichever route submits it: the work
the admin's routes do is the admin's through POST /api/v1/jobs too."""
from __future__ import annotations

from fastapi.testclient import TestClient

from appliance.context import Appliance

MiB = 1 << 20


def forbidden(answer) -> None:
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "ForbiddenError"


def test_admin_work_is_the_admins_through_every_route(appliance: Appliance, operator_client: TestClient,
                                                      api_client: TestClient, tmp_path):
    appliance.vms.create("web", [8 * MiB])
    for kind, params, own_route in (
            ("store.gc", {}, ("/api/v1/store/gc", {})),
            ("store.verify", {}, ("/api/v1/store/verify", {})),
            ("store.prune", {"vm": "web", "keep_last": 1}, ("/api/v1/store/prune", {"vm": "web", "keep_last": 1})),
            ("restore.disk", {"backup_id": "20260101T000000Z-abcd", "target": str(tmp_path / "x.raw")},
             ("/api/v1/backups/20260101T000000Z-abcd/disks/vda/restore", {"target": str(tmp_path / "x.raw")})),
            ("backup", {"vm": "web", "retention": {"keep_last": 1}}, None)):
        forbidden(operator_client.post("/api/v1/jobs", json={"kind": kind, "params": params}))
        if own_route is not None:
            forbidden(operator_client.post(own_route[0], json=own_route[1]))
    assert operator_client.get("/api/v1/jobs").json() == []
    answer = operator_client.post("/api/v1/jobs", json={"kind": "backup", "params": {"vm": "web"}})
    assert answer.status_code == 202, answer.text
    answer = api_client.post("/api/v1/jobs", json={"kind": "store.gc", "params": {"dry_run": True}})
    assert answer.status_code == 202, answer.text
    for job in api_client.get("/api/v1/jobs").json():
        assert appliance.jobs.wait(job["id"], 120).state == "succeeded"
