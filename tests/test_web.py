"""The console's files as the appliance serves them (no browser): where they are, the headers that
keep their scripts to themselves, that every module and API call they name exists, and that no
cookie can act for a user (so a page of another site cannot: no CSRF)."""
from __future__ import annotations

import re

from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.web import STATIC_DIR

JS_FILES = sorted(p for p in STATIC_DIR.rglob("*.js") if "vendor" not in p.relative_to(STATIC_DIR).parts)
# Static imports, and the dynamic one that loads noVNC on the console page only.
IMPORT = re.compile(r'^import .* from "(\.[^"]+)";$|import\("(\.[^"]+)"\)', re.MULTILINE)
# A path the console hands to call()/get()/follow(): a literal starting with an API collection.
API_PATH = re.compile(r'["`](/(?:vms|jobs|backups|store|events|auth|images)[^"`?]*)')


def test_the_console_is_served_at_ui_with_a_strict_policy(appliance):
    client = TestClient(create_app(appliance))
    root = client.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and '<script type="module" src="js/app.js">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/ui/js/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]


def test_a_missing_file_is_a_clear_404(appliance):
    answer = TestClient(create_app(appliance)).get("/ui/js/no-such-page.js")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "NotFoundError"


def test_every_module_the_console_imports_is_there():
    assert JS_FILES
    for js in JS_FILES:
        for target in (static or dynamic for static, dynamic in IMPORT.findall(js.read_text())):
            assert (js.parent / target).resolve().is_file(), f"{js.relative_to(STATIC_DIR)} imports missing {target}"


def _route_pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")


def test_every_api_call_of_the_console_is_in_the_api(appliance):
    """Catches a console left behind by a renamed or removed endpoint (the API is its only back end)."""
    routes = [_route_pattern(p) for p in create_app(appliance).openapi()["paths"]]
    callers = [js for js in JS_FILES if js.name != "roles.js"]   # roles.js names prefixes, not calls
    called = {re.sub(r"\$\{[^}]+\}", "x", path.rstrip("/"))
              for js in callers for path in API_PATH.findall(js.read_text())}
    assert len(called) > 15
    missing = sorted(p for p in called if not any(r.match("/api/v1" + p) for r in routes))
    assert not missing, f"the console calls paths the API does not have: {missing}"


def test_the_pages_are_public_but_only_a_bearer_token_acts(appliance, api_client):
    """No cookie is set or honoured: a form on another site that posts here carries no credentials."""
    stranger = TestClient(create_app(appliance))
    assert stranger.get("/ui/").status_code == 200
    login = api_client.post("/api/v1/auth/login", json={"username": "test-admin",
                                                        "password": "correct horse battery staple"})
    assert login.status_code == 200 and "set-cookie" not in login.headers
    forged = stranger.post("/api/v1/vms", data={"name": "evil"},
                           headers={"Origin": "https://elsewhere.example", "Cookie": f"session={login.json()['token']}"})
    assert forged.status_code == 401
    assert api_client.get("/api/v1/vms").json() == []


def test_the_console_reads_the_role_rule_from_the_api(api_client):
    """roles.js keeps no copy of the rule: it reads GET /api/v1/auth/rules, which decides every
    operation of the OpenAPI as appliance/access/roles.py does (evaluated here as roles.js does)."""
    from appliance.access import roles
    text = (STATIC_DIR / "js" / "roles.js").read_text()
    assert "/auth/rules" in text and "/users" not in text and "/store" not in text

    rule = api_client.get("/api/v1/auth/rules").json()

    def under(path: str, prefixes: list[str]) -> bool:
        return any(path == p or path.startswith(p + "/") for p in prefixes)

    def needed(method: str, path: str) -> str:   # roles.js's needed(), over the rule as data
        if under(path, rule["admin_only"]):
            return "admin"
        if under(path, rule["self_service"]) or method in rule["read_methods"]:
            return "viewer"
        if under(path, rule["admin_writes"]) or any(re.search(p, path) for p in rule["admin_write_patterns"]):
            return "admin"
        return "operator"

    operations = [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
                  for path, item in api_client.get("/api/v1/openapi.json").json()["paths"].items() for method in item]
    assert len(operations) > 100
    for method, path in operations:
        role = roles.required_role(method, path)
        if role is not None:
            assert needed(method, path) == role.value, (method, path)
    assert rule["roles"] == ["viewer", "operator", "admin"]


def test_the_api_docs_are_served_by_the_appliance_itself(appliance):
    """Swagger UI is vendored: /api/v1/docs works on an appliance without internet."""
    client = TestClient(create_app(appliance))
    docs = client.get("/api/v1/docs", follow_redirects=False)
    assert docs.status_code in (302, 307) and docs.headers["location"] == "/ui/api-docs.html"
    page = client.get("/ui/api-docs.html")
    assert page.status_code == 200 and "content-security-policy" in page.headers
    assert not re.search(r'(src|href)="(https?:)?//', page.text), "the docs page loads something from elsewhere"
    for asset in re.findall(r'(?:src|href)="(vendor/[^"]+|js/[^"]+)"', page.text):
        assert client.get(f"/ui/{asset}").status_code == 200, asset
    assert client.get("/api/v1/openapi.json").json()["info"]["title"] == "Cairn"


def test_the_audit_log_is_searched_in_paths_and_errors(api_client):
    api_client.post("/api/v1/vms/ghost/backups", json={})
    api_client.post("/api/v1/pools", json={"kind": "compute", "name": "far", "hosts": ["mars"]})
    found = api_client.get("/api/v1/audit", params={"text": "GHOST"}).json()
    assert [(a["method"], a["path"], a["status"]) for a in found] == [("POST", "/api/v1/vms/ghost/backups", 404)]
    assert [a["path"] for a in api_client.get("/api/v1/audit", params={"text": "mars"}).json()] == ["/api/v1/pools"]
    # A LIKE wildcard in the text is looked for as it is, not as a wildcard.
    assert api_client.get("/api/v1/audit", params={"text": "%"}).json() == []
    assert api_client.get("/api/v1/audit", params={"text": "x" * 201}).status_code == 422


def test_a_boot_test_screen_that_is_not_there_is_a_clear_404(api_client):
    answer = api_client.get("/api/v1/backups/nope/boot-tests/1/screen")
    assert answer.status_code == 404 and "no screen" in answer.json()["error"]["message"]
