"""Who may call what, for every operation of the published OpenAPI x role (anonymous, viewer,
operator, admin) x ownership (the caller's own VM, another group's, a shared one): generated from
the OpenAPI, so a new route is in the matrix the moment it is published.

What each answer must be is what appliance/access/roles.py and visibility.py say: 401 for
anonymous callers except on the public routes, 403 below the route's role, 404 for a VM, backup
or job of another group (like one that is not there), and otherwise the route's own answer, never
a server error, always one the OpenAPI declares. A request the caller may make is sent broken
where it can be (a body or a typed query parameter that does not validate), so that its 422
proves it passed the gate and the visibility guard without changing anything; only requests with
nothing to break run for real, the deleting ones last. Every list a viewer or operator may read
must not name the other group's VM, its backup or its job. The request gate's limits (bodies,
revoked keys) hold on every operation too.
"""
from __future__ import annotations

import re
from typing import Any

import pytest
from contract_helpers import MISSING, OWNERSHIPS, ROLES, World, build_world

from appliance.access.roles import Role, required_role
from appliance.api.gate import MAX_BODY, is_upload
from appliance.context import Appliance

RANK = {None: -1, Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
CALLER_RANK = {"anonymous": -1, "viewer": 0, "operator": 1, "admin": 2}
ORDER = {"get": 0, "put": 1, "patch": 1, "post": 1, "delete": 2}   # what reads first, what deletes last
OTHER_SERVERS = {502, 503}   # another host or receiver failed, when declared: no fault of the gate's


def owned(path: str, parameter: str) -> str | None:
    """What a path parameter names of a VM's: `vm`, `backup` or `job` (or None: not a VM's)."""
    if parameter == "backup_id":
        return "backup"
    if parameter == "job_id":
        return "job"
    if (parameter == "vm" and not path.startswith("/api/v1/hosts/")) or \
            (parameter == "name" and path.startswith("/api/v1/vms/")):
        return "vm"
    return None


def operations(world: World) -> list[tuple[str, str, dict[str, Any]]]:
    found = [(method, path, operation) for path, methods in world.spec()["paths"].items()
             for method, operation in methods.items()]
    return sorted(found, key=lambda op: ORDER[op[0]])


def concrete(world: World, path: str, ownership: str) -> tuple[str, bool]:
    """The path with its parameters filled, and whether it names a VM's (VM, backup or job)."""
    vm = world.vms[ownership]
    names_vm = False

    def fill(match: re.Match[str]) -> str:
        nonlocal names_vm
        kind = owned(path, match.group(1))
        names_vm |= kind is not None
        return {"vm": vm.name, "backup": vm.backup, "job": vm.job, None: MISSING}[kind]
    return re.sub(r"\{(\w+)\}", fill, path), names_vm


def broken(world: World, operation: dict[str, Any]) -> dict[str, Any] | None:
    """Request arguments that fail the operation's validation, or None if nothing can fail."""
    if "requestBody" in operation:
        return {"content": b"0", "headers": {"Content-Type": "application/json"}}   # no body schema takes a bare 0
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        types = {schema.get("type"), *(s.get("type") for s in schema.get("anyOf", []))} - {None, "null"}
        if parameter["in"] == "query" and types and types <= {"integer", "boolean", "number"}:
            return {"params": {parameter["name"]: "not-a-" + "-".join(sorted(types))}}
    return None


def expected_refusal(method: str, path: str, role: str, ownership: str, names_vm: bool) -> int | None:
    needed = required_role(method.upper(), path)
    if needed is not None and role == "anonymous":
        return 401
    if CALLER_RANK[role] < RANK[needed]:
        return 403
    if names_vm and ownership == "other" and role != "admin":
        return 404
    return None


@pytest.fixture
def world(appliance: Appliance) -> World:
    return build_world(appliance)


@pytest.mark.parametrize("role", ROLES)
def test_every_route_answers_each_role_and_owner_as_the_rules_say(world: World, role: str):
    client = world.client(role)
    other = world.vms["other"]
    problems, checked = [], 0
    for method, template, operation in operations(world):
        if template == "/api/v1/events/stream":
            continue   # a stream that ends with its job: test_visibility follows it as each caller
        for ownership in OWNERSHIPS:
            path, names_vm = concrete(world, template, ownership)
            refusal = expected_refusal(method, path, role, ownership, names_vm)
            request = (broken(world, operation) or {}) if refusal is None else {}
            answer = client.request(method.upper(), path, **request)
            checked += 1
            status, what = answer.status_code, f"{role} {ownership}: {method.upper()} {path} -> {answer.status_code}"
            declared = {int(code) for code in operation["responses"]}
            if status not in declared:
                problems.append(f"{what}, which the OpenAPI does not declare ({sorted(declared)})")
            if refusal is not None:
                if status != refusal:
                    problems.append(f"{what}, not {refusal}: {answer.text[:200]}")
            elif status in (401, 403) or (status >= 500 and status not in OTHER_SERVERS):
                problems.append(f"{what}: {answer.text[:200]}")
            elif request and status != 422:
                problems.append(f"{what}, not 422 for a request that does not validate: {answer.text[:200]}")
            elif method == "get" and status == 200 and role in ("viewer", "operator") and \
                    any(secret in answer.text for secret in (other.name, other.backup, other.job)):
                problems.append(f"{what} names the other group's VM, backup or job: {answer.text[:300]}")
    assert checked >= len(OWNERSHIPS) * 100
    assert not problems, f"{len(problems)} of {checked} requests:\n" + "\n".join(problems)


def test_every_route_refuses_a_body_over_the_limit_and_a_revoked_key(world: World):
    """The request gate's limits hold on every operation, generated like the matrix: a body over
    MAX_BODY is refused (413, or 401 first for a caller who is not signed in) and, once its key
    is revoked, the operator is refused everywhere but on the public routes."""
    too_large = b"0" * (MAX_BODY + 1)
    operator = world.client("operator")
    key_id = next(key["id"] for key in operator.get("/api/v1/tokens").json() if key["revoked_at"] is None)
    problems = []
    for method, template, _ in operations(world):
        path, _ = concrete(world, template, "own")
        public = required_role(method.upper(), path) is None
        for role, allowed in (("anonymous", {413} if public else {401}), ("operator", {403, 413})):
            if is_upload(method.upper(), path):
                continue   # an image upload is streamed to disk up to max_upload: test_security_bodies
            status = world.client(role).request(method.upper(), path, content=too_large).status_code
            if status not in allowed:
                problems.append(f"{role}: {method.upper()} {path} with {len(too_large)} bytes -> {status}")
    assert operator.delete(f"/api/v1/tokens/{key_id}").status_code == 200
    for method, template, _ in operations(world):
        path, _ = concrete(world, template, "own")
        if required_role(method.upper(), path) is not None and template != "/api/v1/events/stream" and \
                (status := operator.request(method.upper(), path).status_code) != 401:
            problems.append(f"revoked key: {method.upper()} {path} -> {status}")
    assert not problems, "\n".join(problems)
