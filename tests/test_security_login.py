"""Signing in under concurrency and behind proxies: one TOTP code signs in once however many
logins race with it, at most five passwords are checked per user and address in a window however
many arrive at once (both settled by the catalog, on SQLite and PostgreSQL), and X-Forwarded-For
counts only from a configured proxy (none by default)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pyotp
import pytest
from catalog_backends import catalog_url  # noqa: F401  (fixture)
from sqlalchemy import select
from test_auth_serve import serving
from web_helpers import previous_totp_code

from appliance.access.records import LoginAttemptRecord, UserRecord
from appliance.access.roles import Role
from appliance.access.throttle import MAX_FAILURES, WINDOW, TooManyAttemptsError
from appliance.context import Appliance
from appliance.errors import UnauthorizedError
from dedup import Store

PASSWORD = "the right password"


@pytest.fixture
def appliance(appliance_data_dir: Path, catalog_url: str | None) -> Appliance:  # noqa: F811
    Store.init(appliance_data_dir / "store")
    return Appliance.open(str(appliance_data_dir), catalog_url)


def at_once(count: int, attempt: Callable[[], object]) -> list[object]:
    """Run `attempt` in `count` threads released together; each one's result or exception."""
    start = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = attempt()
        except Exception as e:
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_one_totp_code_signs_in_once(appliance: Appliance):
    appliance.users.create("ann", PASSWORD, Role.VIEWER)
    secret = appliance.users.enrol_totp("ann").secret
    appliance.users.confirm_totp("ann", previous_totp_code(secret))
    code = pyotp.TOTP(secret).now()
    results = at_once(8, lambda: appliance.auth.login("ann", PASSWORD, code, "192.0.2.7"))
    sessions = [r for r in results if not isinstance(r, Exception)]
    assert len(sessions) == 1, results
    # The others: the code is used, or (past five attempts at once) the throttle said wait.
    assert all(isinstance(r, UnauthorizedError | TooManyAttemptsError) for r in results
               if isinstance(r, Exception)), results


def test_a_totp_step_is_claimed_by_the_catalog_not_by_what_a_session_read(appliance: Appliance):
    """Deterministic form of the race above: eight sign-ins that all read the user before any
    of them accepts the code (as concurrent requests or processes can); one may use it."""
    appliance.users.create("ann", PASSWORD, Role.VIEWER)
    secret = appliance.users.enrol_totp("ann").secret
    appliance.users.confirm_totp("ann", previous_totp_code(secret))
    code = pyotp.TOTP(secret).now()
    sessions = [appliance.catalog() for _ in range(8)]
    try:
        users = [s.scalar(select(UserRecord).where(UserRecord.name == "ann")) for s in sessions]
        accepted = []
        for session, user in zip(sessions, users, strict=True):
            accepted.append(appliance.users.accept_totp(user, code))
            session.commit()
    finally:
        for session in sessions:
            session.close()
    assert accepted.count(True) == 1, accepted


def test_concurrent_guesses_get_five_password_checks(appliance: Appliance):
    appliance.users.create("ann", PASSWORD, Role.VIEWER)
    results = at_once(40, lambda: appliance.auth.login("ann", "a wrong guess", None, "192.0.2.8"))
    checked = [r for r in results if isinstance(r, UnauthorizedError)]
    throttled = [r for r in results if isinstance(r, TooManyAttemptsError)]
    assert len(checked) == MAX_FAILURES and len(throttled) == 40 - MAX_FAILURES, results
    # The real password too waits now, from that address; another address is not held up.
    with pytest.raises(TooManyAttemptsError):
        appliance.auth.login("ann", PASSWORD, None, "192.0.2.8")
    assert appliance.auth.login("ann", PASSWORD, None, "192.0.2.9").user.name == "ann"


def test_forwarded_for_counts_only_from_a_trusted_proxy(appliance_data_dir: Path):
    Store.init(appliance_data_dir / "store")
    Appliance.open(str(appliance_data_dir)).users.create("ann", PASSWORD, Role.ADMIN)

    def guesses(base: str) -> list[int]:
        with httpx.Client(base_url=base, timeout=30) as http:
            return [http.post("/api/v1/auth/login", json={"username": "ann", "password": "wrong guess"},
                              headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(7)]

    def audited_clients() -> set[str]:
        appliance = Appliance.open(str(appliance_data_dir))
        return {entry.client for entry in appliance.audit.list(actor="ann")}

    with serving(appliance_data_dir, "--insecure-http") as (port, _):
        # From loopback but no configured proxy: each forged address is still 127.0.0.1.
        assert guesses(f"http://127.0.0.1:{port}") == [401] * MAX_FAILURES + [429] * 2
    assert audited_clients() == {"127.0.0.1"}
    with serving(appliance_data_dir, "--insecure-http", "--trusted-proxy", "127.0.0.1") as (port, _):
        # A configured proxy's header is believed: each address is a client of its own.
        assert guesses(f"http://127.0.0.1:{port}") == [401] * 7
    assert {f"203.0.113.{i}" for i in range(7)} <= audited_clients()


def test_ended_windows_are_swept(appliance: Appliance):
    """Guesses at ever new names leave no more rows than one window holds."""
    now = [appliance.auth.clock()]
    appliance.auth.throttle.clock = lambda: now[0]
    for name in ("x1", "x2", "x3"):
        appliance.auth.throttle.attempt(name, "192.0.2.10")
    now[0] += WINDOW
    appliance.auth.throttle.attempt("x4", "192.0.2.10")
    with appliance.catalog() as s:
        assert [r.user_name for r in s.scalars(select(LoginAttemptRecord))] == ["x4"]
