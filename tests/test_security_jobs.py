"""The role a job needs comes from one rule, whichever route submits it: store maintenance and
pruning are the admin's through POST /api/v1/jobs exactly as through their own routes."""
from __future__ import annotations

from fastapi.testclient import TestClient

from appliance.context import Appliance

MiB = 1 << 20


def forbidden(answer) -> None:
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "ForbiddenError"


def test_an_operator_cannot_reach_admin_work_through_the_generic_route(
        appliance: Appliance, operator_client: TestClient, api_client: TestClient):
    appliance.vms.create("web", [8 * MiB])
    forbidden(operator_client.post("/api/v1/store/gc-jobs", json={}))
    forbidden(operator_client.post("/api/v1/jobs", json={"kind": "store.gc", "params": {}}))
    forbidden(operator_client.post("/api/v1/store/verify-jobs", json={}))
    forbidden(operator_client.post("/api/v1/jobs", json={"kind": "store.verify", "params": {}}))
    # A backup that prunes afterwards removes backups for good: the admin's, like prune itself.
    forbidden(operator_client.post("/api/v1/jobs", json={"kind": "backup",
                                                         "params": {"vm": "web", "retention": {"keep_last": 1}}}))
    assert operator_client.get("/api/v1/jobs").json() == []
    # What an operator may do, they may do through either route.
    for answer in (operator_client.post("/api/v1/jobs", json={"kind": "backup", "params": {"vm": "web"}}),
                   operator_client.post("/api/v1/vms/web/backups", json={})):
        assert answer.status_code == 202, answer.text
    for answer in (api_client.post("/api/v1/jobs", json={"kind": "store.gc", "params": {"dry_run": True}}),
                   api_client.post("/api/v1/jobs", json={"kind": "backup",
                                                         "params": {"vm": "web", "retention": {"keep_last": 1}}})):
        assert answer.status_code == 202, answer.text
    for job in api_client.get("/api/v1/jobs").json():
        appliance.jobs.wait(job["id"], 120)
