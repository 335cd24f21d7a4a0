"""Every name a user chooses is checked whole before anything uses it (appliance/names.py, and
vmm's rules for what QEMU sees): path climbing, commas (QEMU option injection), newlines, shell
syntax, very long and non-ASCII names are refused with a 4xx, and nothing is made, moved or
removed, inside the data dir or outside it."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from test_visibility import backed_up

from appliance.context import Appliance
from appliance.hosts.service import HostSpecError

HOSTILE = ["../x", "a,b", "x,file=/etc/shadow", "x\n", "admin\n", "$(id)", "`id`", "x" * 300,
           "ünïcode", "", " x", "a/b", "x\u0000y", "x y", "-x"]
MiB = 1 << 20


def refused(answer, what: str) -> None:
    assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text}"


def everything(appliance: Appliance, client: TestClient) -> dict:
    """What the API and the disk hold, to compare before and after."""
    data_dir = appliance.settings.data_dir
    return {path: sorted(str(p.relative_to(data_dir)) for p in (data_dir / path).rglob("*"))
            for path in ("vms", "images", "instant", "run")} | {
        "top": sorted(p.name for p in data_dir.iterdir()),
        **{route: client.get(f"/api/v1/{route}").json()
           for route in ("vms", "images", "users", "scheduling-groups", "policies", "pools", "networks", "hosts")}}


@pytest.fixture
def victim(appliance: Appliance):
    """A folder beside the data dir that looks like a finished instant restore's."""
    folder = Path(tempfile.mkdtemp(prefix="victim-", dir=appliance.settings.data_dir.parent))
    (folder / "state.json").write_text(json.dumps({"vm": "victim", "backup_id": "b", "store": "s", "disks": [],
                                                   "status": "done"}))
    yield folder
    (folder / "state.json").unlink(missing_ok=True)
    folder.rmdir()


def test_hostile_names_are_refused_everywhere_an_operator_names_something(
        appliance: Appliance, api_client: TestClient, operator_client: TestClient, victim: Path):
    assert operator_client.post("/api/v1/vms", json={"name": "src", "disks": ["8M"]}).status_code == 201
    _, backup = backed_up(operator_client, "src")
    before = everything(appliance, api_client)
    for name in [*HOSTILE, f"../../{victim.name}"]:
        for what, answer in (
                ("vm", operator_client.post("/api/v1/vms", json={"name": name, "disks": ["8M"]})),
                ("clone", operator_client.post("/api/v1/vms/src/clones", json={"names": [name]})),
                ("image upload", operator_client.put(f"/api/v1/images/{quote(name, safe='')}", content=b"\0" * 512)),
                ("image of a vm", operator_client.post("/api/v1/vms/src/image", json={"image": name})),
                ("snapshot", operator_client.post("/api/v1/vms/src/snapshots", json={"name": name})),
                ("scheduling group", operator_client.put(
                    f"/api/v1/scheduling-groups/{quote(name, safe='')}",
                    json={"policy": "vm-anti-affinity", "enforcement": "preferred", "vms": ["src"]})),
                ("tag", operator_client.put("/api/v1/vms/src/tags", json=[name])),
                ("snapshot job prefix", operator_client.post("/api/v1/jobs", json={
                    "kind": "snapshot", "params": {"vm": "src", "prefix": name}})),
                ("restore as a new vm", operator_client.post(f"/api/v1/backups/{backup}/restore",
                                                             json={"mode": "new", "name": name})),
                ("instant restore", operator_client.post(f"/api/v1/backups/{backup}/instant-restore",
                                                         json={"name": name})),
                ("tap", operator_client.post("/api/v1/vms", json={"name": "nic", "nics": [{"mode": "tap", "tap": name}]})),
                ("bridge", operator_client.post("/api/v1/vms", json={"name": "nic", "nics": [{"mode": "bridge",
                                                                                             "bridge": name}]}))):
            refused(answer, f"{what} {name!r}")
    for mac in ("52:54:00:12:34:56\n", "52:54:00:12:34:56,id=x"):
        refused(operator_client.post("/api/v1/vms", json={"name": "nic", "disks": ["8M"], "nics": [{"mac": mac}]}),
                f"mac {mac!r}")
    assert everything(appliance, api_client) == before
    assert (victim / "state.json").exists()
    assert appliance.snapshots.tree("src").snapshots == {}


def test_hostile_names_are_refused_where_an_admin_names_something(appliance: Appliance, api_client: TestClient):
    appliance.vms.create("src", [8 * MiB])
    before = everything(appliance, api_client)
    for name in HOSTILE:
        for what, answer in (
                ("user", api_client.post("/api/v1/users", json={"name": name, "password": "long enough password"})),
                ("user group", api_client.patch("/api/v1/users/test-admin", json={"groups": [name]})),
                ("vm group", api_client.put("/api/v1/vms/src/access", json={"group": name})),
                ("vm owner", api_client.put("/api/v1/vms/src/access", json={"owner": name})),
                ("policy", api_client.post("/api/v1/policies", json={"kind": "backup", "name": name,
                                                                     "schedule": "0 2 * * *", "vms": ["*"]})),
                ("address pool", api_client.post("/api/v1/pools", json={"kind": "address", "name": name,
                                                                        "subnet": "10.72.0.0/28"})),
                ("network", api_client.post("/api/v1/networks", json={"name": name, "address_pool": "none"})),
                ("bridge", api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "none",
                                                                     "bridge": name})),
                ("netns", api_client.post("/api/v1/networks", json={"name": "lan", "address_pool": "none",
                                                                    "netns": name})),
                ("host", api_client.post("/api/v1/hosts", json={"name": name, "uri": "qemu:///nowhere"}))):
            refused(answer, f"{what} {name!r}")
        with pytest.raises(HostSpecError):
            appliance.hosts.snapshot("nowhere", "vm", name)
    assert everything(appliance, api_client) == before
    assert appliance.vms.show("src") and api_client.get("/api/v1/vms/src/access").json()["group"] is None


def test_an_access_key_label_holds_no_control_character(api_client: TestClient):
    for label in ("cron\njob", "bell\a", "nul\u0000"):
        refused(api_client.post("/api/v1/tokens", json={"name": label}), f"token {label!r}")
    assert api_client.post("/api/v1/tokens", json={"name": "Sicherung für München, nightly"}).status_code == 201


# -- generated from the OpenAPI: every name a request carries, so none is missed ------------------

# The fields that name something (a body's keys, a path's parameters), by their name in the OpenAPI.
NAME_FIELDS = {"name", "names", "image", "iso", "group", "groups", "vm", "vms", "prefix", "tap", "bridge", "netns",
               "owner", "snapshot", "tags", "disk", "storage_pool", "address_pool", "host", "hosts", "kernel",
               "initrd", "kind", "ref", "token_id", "backup_id", "job_id", "recycle_id", "address", "target"}
# Labels in any language, not names: check_text keeps control characters out of them (tested above),
# and a comma or a non-Latin letter is what a label may hold.
FREE_TEXT = {("POST", "/api/v1/tokens", "name")}
# What no name of any kind may be: each would climb out of a folder, add a QEMU option, forge a
# log line, run in a shell, or outgrow every limit.
REFUSED_EVERYWHERE = ["../x", "x,file=/etc/shadow", "x\n", "$(id)", "x" * 300]


def name_fields(schema: dict, components: dict, seen: frozenset[str] = frozenset()) -> set[str]:
    """The keys of NAME_FIELDS anywhere in a body's schema (its variants and items too)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return set() if name in seen else name_fields(components[name], components, seen | {name})
    found = {key for key in schema.get("properties", {}) if key in NAME_FIELDS}
    for part in (*schema.get("anyOf", []), *schema.get("oneOf", []), *schema.get("properties", {}).values(),
                 *([schema["items"]] if "items" in schema else [])):
        found |= name_fields(part, components, seen)
    return found


def filled(schema: dict, components: dict, hostile: str, fields: set[str], key: str = "") -> list:
    """Bodies that keep the schema as far as a simple filler can, every name field set to
    `hostile`: one per variant of a union, so each kind (of a job, a pool...) is tried."""
    if "$ref" in schema:
        return filled(components[schema["$ref"].rsplit("/", 1)[1]], components, hostile, fields, key)
    if variants := schema.get("oneOf") or [s for s in schema.get("anyOf", []) if s.get("type") != "null"]:
        return [body for variant in variants for body in filled(variant, components, hostile, fields, key)]
    kind = schema.get("type")
    if key in fields and kind in ("string", None):
        return [hostile]
    if kind == "object":
        body: dict = {}
        for prop, sub in schema.get("properties", {}).items():
            if prop in schema.get("required", []) or prop in fields:
                choices = filled(sub, components, hostile, fields, prop)
                if "const" in sub or "enum" in sub:
                    choices = [sub.get("const", (sub.get("enum") or [None])[0])]
                body[prop] = choices[0]
        return [body]
    if kind == "array":
        return [[item] for item in filled(schema["items"], components, hostile, fields, key)[:1]]
    return [{"string": "x", "integer": 1, "number": 1, "boolean": False}.get(kind, "x")
            if "const" not in schema and "enum" not in schema else schema.get("const", (schema.get("enum") or [None])[0])]


def requests_naming(spec: dict, hostile: str) -> list[tuple[str, str, dict]]:
    """(method, path, request arguments) for every operation: each of its path parameters set
    to `hostile` in turn, and its body with every name field set to `hostile`."""
    made = []
    for template, methods in spec["paths"].items():
        for method, operation in methods.items():
            params = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            for param in params:
                path = template
                for other in params:
                    path = path.replace("{" + other + "}", quote(hostile if other == param else "src", safe=""))
                made.append((method.upper(), path, {}))
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is None:
                continue
            fields = name_fields(body, spec["components"]["schemas"]) - {
                key for m, p, key in FREE_TEXT if (m, p) == (method.upper(), template)}
            if fields:
                path = re.sub(r"\{\w+\}", "src", template)
                made += [(method.upper(), path, {"json": b})
                         for b in filled(body, spec["components"]["schemas"], hostile, fields)
                         if hostile in json.dumps(b, ensure_ascii=False)]   # variants without a name: nothing to try
    return made


def test_every_name_in_the_openapi_refuses_hostile_values(appliance: Appliance, api_client: TestClient,
                                                          victim: Path):
    """As an admin, who may name the most: every path parameter and every body field named like a
    name, of every operation, set to each hostile value: refused, and nothing made, moved or removed."""
    appliance.vms.create("src", [8 * MiB])
    before = everything(appliance, api_client)
    spec, sent = api_client.get("/api/v1/openapi.json").json(), 0
    problems = []
    for hostile in [*REFUSED_EVERYWHERE, f"../../{victim.name}"]:
        for method, path, request in requests_naming(spec, hostile):
            if path.startswith("/api/v1/events/stream"):
                continue   # a stream: its `job` is a query parameter, looked up as a job id
            answer = api_client.request(method, path, **request)
            sent += 1
            if not 400 <= answer.status_code < 500:
                problems.append(f"{method} {path} {request}: {answer.status_code} {answer.text[:200]}")
    assert sent > 500
    assert not problems, "\n".join(problems)
    assert everything(appliance, api_client) == before
    assert (victim / "state.json").exists()
