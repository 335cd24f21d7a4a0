"""Secrets never reach a log: the first admin's password is in its 0600 file only, and a secret
in a request's query string (the console's one-time token) is masked in the access log."""
from __future__ import annotations

import ssl
import stat
from pathlib import Path

import httpx
from test_auth_serve import output, serving


def test_the_serve_log_holds_no_secret(appliance_data_dir: Path):
    password_file = appliance_data_dir / "initial-admin-password"
    with serving(appliance_data_dir) as (port, server):
        pinned = ssl.create_default_context(cafile=str(appliance_data_dir / "tls" / "cert.pem"))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=pinned, timeout=30) as https:
            password = password_file.read_text().strip()
            assert https.post("/api/v1/auth/login", json={"username": "admin", "password": password}).status_code == 200
            https.get("/api/v1/console", params={"token": "console-token-secret"})
            https.get("/api/v1/health", params={"access_token": "query-token-secret"})
    log = output(server)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password not in log
    assert str(password_file) in log                  # where the password is, said once
    assert "console-token-secret" not in log and "query-token-secret" not in log
    assert "/api/v1/console?token=***" in log         # the request is still logged, its secret masked
