"""A small appliance for the tests that are generated from the API's own OpenAPI (the contract
run, the authorization matrix): a user of each role in group `blue`, and three VMs, each backed
up (so each has a backup and a job): `own-vm`, the blue operator's and shared with group blue
(the callers' own), `other-vm`, made by an operator of group red (another group's), and
`shared-vm`, made by the local CLI (no owner: everyone's). All real: a real catalog and store,
QEMU's tools for the disks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conftest import TEST_PASSWORD
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_visibility import backed_up

from appliance.access.roles import Role
from appliance.access.visibility import visibility
from appliance.api.app import create_app
from appliance.context import Appliance

ROLES = ("anonymous", "viewer", "operator", "admin")
OWNERSHIPS = ("own", "other", "shared")
MISSING = "nothing-here"   # what a path names when it names nothing of the world


@dataclass
class VMFixture:
    name: str
    backup: str
    job: str


@dataclass
class World:
    appliance: Appliance
    app: FastAPI
    # role -> an access key: unlike a session, no request of the tests can end it (DELETE
    # /auth/session answers that it is a key); anonymous: none
    tokens: dict[str, str]
    vms: dict[str, VMFixture]           # ownership -> the VM the callers of group blue see that way
    clients: dict[str, TestClient] = field(default_factory=dict)

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role in self.tokens else {}

    def client(self, role: str) -> TestClient:
        if role not in self.clients:
            self.clients[role] = TestClient(self.app, raise_server_exceptions=False, headers=self.headers(role))
        return self.clients[role]

    def spec(self) -> dict[str, Any]:
        return self.app.openapi()


def access_key(app: FastAPI, appliance: Appliance, name: str, role: Role, groups: list[str]) -> str:
    """A new user's access key, made through the API as a script would."""
    appliance.users.create(name, TEST_PASSWORD, role)
    appliance.users.update(name, groups=groups)
    client = TestClient(app)
    answer = client.post("/api/v1/auth/login", json={"username": name, "password": TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    answer = client.post("/api/v1/tokens", json={"name": "tests generated from the OpenAPI"},
                         headers={"Authorization": f"Bearer {answer.json()['token']}"})
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def build_world(appliance: Appliance) -> World:
    """viewer, operator and admin of group blue; `red` (an operator of group red) owns the other VM."""
    app = create_app(appliance)
    tokens = {role: access_key(app, appliance, f"{role}-blue", Role(role), ["blue"]) for role in ROLES[1:]}
    red = TestClient(app, headers={"Authorization": f"Bearer {access_key(app, appliance, 'red', Role.OPERATOR, ['red'])}"})
    operator = TestClient(app, headers={"Authorization": f"Bearer {tokens['operator']}"})
    for client, name in ((operator, "own-vm"), (red, "other-vm")):
        assert client.post("/api/v1/vms", json={"name": name, "disks": ["8M"]}).status_code == 201
    visibility(appliance).set("own-vm", "operator-blue", "blue")
    appliance.vms.create("shared-vm", [8 << 20])   # the local CLI's: no owner, everyone's
    admin = TestClient(app, headers={"Authorization": f"Bearer {tokens['admin']}"})
    vms = {}
    for ownership, client in (("own", operator), ("other", red), ("shared", admin)):
        name = f"{ownership}-vm"
        job, backup = backed_up(client, name)
        vms[ownership] = VMFixture(name, backup, job)
    return World(appliance, app, tokens, vms)
