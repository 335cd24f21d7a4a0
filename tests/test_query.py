"""The list query syntax (limit, offset, sort, filter) on catalog tables and on Python lists."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from appliance.catalog.query import ListQuery, QueryError
from appliance.context import Appliance

VMS = [{"name": "web1", "state": "running", "memory_mib": 512, "pid": 10, "disks": [{"name": "vda"}]},
       {"name": "web2", "state": "stopped", "memory_mib": 256, "pid": None, "disks": [{"name": "vdb"}]},
       {"name": "db1", "state": "running", "memory_mib": 2048, "pid": 12, "disks": []}]


def names(items: list[dict]) -> list[str]:
    return [i["name"] for i in items]


def test_python_lists_filter_sort_and_page():
    q = ListQuery.parse
    assert names(q(sort="-memory_mib").apply(VMS, "vms")) == ["db1", "web1", "web2"]
    assert names(q(sort="state,-name").apply(VMS, "vms")) == ["web1", "db1", "web2"]
    assert names(q(filters=["state:eq:running", "memory_mib:gt:1000"]).apply(VMS, "vms")) == ["db1"]
    assert names(q(filters=["name:contains:WEB"]).apply(VMS, "vms")) == ["web1", "web2"]
    assert names(q(filters=["name:in:web2|db1"]).apply(VMS, "vms")) == ["web2", "db1"]
    assert names(q(filters=["pid:eq:null"]).apply(VMS, "vms")) == ["web2"]
    assert names(q(filters=["pid:ne:null"], sort="pid").apply(VMS, "vms")) == ["web1", "db1"]
    assert names(q(limit=1, offset=1, sort="name").apply(VMS, "vms")) == ["web1"]


@pytest.mark.parametrize(("filters", "sort", "message"), [
    (["state=running"], None, "not field:op:value"),
    (["state:like:run"], None, "unknown operator"),
    (["colour:eq:red"], None, "cannot filter 'colour'"),
    ([], "-colour", "cannot sort by 'colour'"),
    (["memory_mib:gt:lots"], None, "not a valid int"),
    ([], "disks", "do not compare"),
])
def test_python_list_errors_say_what_is_wrong(filters, sort, message):
    with pytest.raises(QueryError, match=message):
        ListQuery.parse(filters=filters, sort=sort).apply(VMS, "vms")


def test_catalog_lists_through_the_api(api_client: TestClient, appliance: Appliance):
    events = appliance.jobs.events
    for n in range(5):
        events.emit("test.tick", f"tick {n}", severity="warning" if n % 2 else "info", data={"n": n})
    r = api_client.get("/api/v1/events", params={"filter": ["kind:eq:test.tick", "severity:eq:info"],
                                                 "sort": "-id", "limit": 2})
    assert r.status_code == 200 and r.headers["x-total-count"] == "3"
    assert [e["message"] for e in r.json()] == ["tick 4", "tick 2"]
    r = api_client.get("/api/v1/events", params={"filter": "kind:eq:test.tick", "sort": "id", "offset": 3})
    assert [e["message"] for e in r.json()] == ["tick 3", "tick 4"]
    since = datetime(2000, 1, 1, tzinfo=UTC).isoformat()
    assert len(api_client.get("/api/v1/events", params={"filter": f"created_at:gt:{since}"}).json()) == 5
    assert api_client.get("/api/v1/events", params={"filter": "message:contains:TICK 1"}).json()[0]["data"] == \
        {"n": 1}

    for params, message in [({"filter": "nope:eq:1"}, "cannot filter 'nope'"),
                            ({"filter": "data:eq:1"}, "structured data"),
                            ({"sort": "data"}, "structured data"),
                            ({"filter": "id:gt:many"}, "not a valid int"),
                            ({"filter": "id:gt:" + "9" * 30}, "out of range"),
                            ({"sort": "-nope"}, "cannot sort by 'nope'")]:
        r = api_client.get("/api/v1/events", params=params)
        assert r.status_code == 422 and message in r.json()["error"]["message"], r.json()
    assert api_client.get("/api/v1/jobs", params={"limit": 0}).status_code == 422
    assert api_client.get("/api/v1/jobs", params={"limit": 5000}).status_code == 422
    assert api_client.get("/api/v1/jobs", params={"filter": "state:eq:failed"}).json() == []
