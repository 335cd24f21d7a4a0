"""The console in headless Chromium against `cairn serve`, without running a guest: each role is
offered only what it may do, signing in (wrong password, TOTP), the end of a session (on the
server, by expiry, by signing out), and how long the dashboard takes with 1,000 VMs."""
from __future__ import annotations

import contextlib
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from web_helpers import (
    PASSWORD,
    add_user,
    chromium,
    confirm,
    console_server,
    element,
    previous_totp_code,
    screenshot,
    sign_in,
    until,
)

from appliance.access.roles import Role
from appliance.context import Appliance
from appliance.vms.records import VMRecord

pytestmark = pytest.mark.slow
PAGES = ("#/", "#/vms", "#/vm/idle", "#/jobs", "#/store")
MiB = 1 << 20


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cairn-web-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def served(data_dir: Path) -> Iterator[tuple[str, str]]:
    """(base URL, TOTP secret of user `guarded`); users watcher, runner, boss, newbie; a stopped VM `idle`."""
    for name, role in (("watcher", Role.VIEWER), ("runner", Role.OPERATOR), ("boss", Role.ADMIN),
                       ("newbie", Role.VIEWER)):
        add_user(data_dir, name, role)
    secret = add_user(data_dir, "guarded", Role.VIEWER, totp=True)
    Appliance.open(str(data_dir)).vms.create("idle", [16 * MiB])
    with console_server(data_dir) as base:
        yield base, secret


def offered(browser, page: str) -> set[str]:
    """The labels of the buttons `page` offers, once it has drawn."""
    browser.execute_script("location.hash = arguments[0]", page)
    until(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "main > div > h1"), f"page {page}")
    time.sleep(0.5)   # settle: a page draws once its answers are in
    return {b.text for b in browser.find_elements(By.CSS_SELECTOR, "main button") if b.is_displayed()}


def test_each_role_is_offered_only_what_it_may_do(served):
    base, _ = served
    with chromium() as browser:
        sign_in(browser, base, "watcher")
        for page in PAGES:
            assert offered(browser, page) == set(), page
            assert not browser.find_elements(By.CSS_SELECTOR, "main form"), page
        screenshot(browser, "roles-viewer-store")
    with chromium() as browser:
        sign_in(browser, base, "runner")
        assert {"Start", "Delete", "Create VM"} <= offered(browser, "#/vms")
        assert {"Start", "Delete", "Take snapshot", "Back up now"} <= offered(browser, "#/vm/idle")
        assert offered(browser, "#/store") == set()   # the store's upkeep is the admin's
    with chromium() as browser:
        sign_in(browser, base, "boss")
        assert {"Verify", "GC preview", "Run GC"} <= offered(browser, "#/store")


def test_signing_in_with_totp_and_every_way_a_session_ends(served, data_dir):
    base, secret = served
    with chromium() as browser:
        browser.get(f"{base}/ui/")
        form = element(browser, "#login")
        form.find_element(By.NAME, "username").send_keys("watcher")
        form.find_element(By.NAME, "password").send_keys("not the password")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, "#login-message", "wrong user name or password")
        assert not browser.find_element(By.ID, "top").is_displayed()

        browser.get(f"{base}/ui/")
        form = element(browser, "#login")
        form.find_element(By.NAME, "username").send_keys("guarded")
        form.find_element(By.NAME, "password").send_keys(PASSWORD)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        code = element(browser, "#totp-field input")   # asked for once the password is right
        element(browser, "#login-message", "TOTP")
        screenshot(browser, "sign-in-totp")
        wrong = f"{(int(pyotp.TOTP(secret).now()) + 1) % 1_000_000:06d}"
        code.send_keys(wrong)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, "#login-message", "wrong or already used TOTP code")
        code.clear()
        code.send_keys(pyotp.TOTP(secret).now())
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, "#whoami", "guarded (viewer)")

        # Ended on the server (another tab signed out, an admin disabled the user): the page's live
        # stream notices within a second or so, or else the next call does; either says so.
        token = browser.execute_script("return JSON.parse(sessionStorage.getItem('cairn.session')).token")
        cert = ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem"))
        httpx.delete(f"{base}/api/v1/auth/session", headers={"Authorization": f"Bearer {token}"}, verify=cert)
        for link in browser.find_elements(By.CSS_SELECTOR, "header a"):
            if link.text == "Jobs" and link.is_displayed():
                with contextlib.suppress(WebDriverException):   # the stream may sign out first
                    link.click()
        element(browser, "#login-message", "sign in again")

        # Expiry: the console signs out at the session's expires_at, without waiting for a refused call.
        sign_in(browser, base, "watcher")
        browser.execute_script("""const s = JSON.parse(sessionStorage.getItem('cairn.session'));
            s.expires_at = new Date(Date.now() + 2000).toISOString();
            sessionStorage.setItem('cairn.session', JSON.stringify(s)); location.reload();""")
        element(browser, "#login-message", "Your session has expired")

        sign_in(browser, base, "watcher")
        token = browser.execute_script("return JSON.parse(sessionStorage.getItem('cairn.session')).token")
        element(browser, "#sign-out").click()
        element(browser, "#login-message", "Signed out")
        refused = httpx.get(f"{base}/api/v1/vms", headers={"Authorization": f"Bearer {token}"}, verify=cert)
        assert refused.status_code == 401


def test_own_totp_and_tokens_and_the_admins_users_page(served, data_dir):
    base, _ = served
    cert = ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem"))
    with chromium() as browser:
        sign_in(browser, base, "newbie")
        element(browser, "#whoami").click()
        element(browser, "main button", "Set up TOTP").click()
        secret = element(browser, "[data-totp-secret]").text
        # The previous step's code: the current one is then still good for signing in at once.
        element(browser, "main input[name=code]").send_keys(previous_totp_code(secret))
        element(browser, "main button", "Turn TOTP on").click()
        element(browser, "main p", "TOTP is on")

        element(browser, "main input[name=name]").send_keys("nightly script")
        element(browser, "main button", "Create token").click()
        token = element(browser, "[data-new-token]").text
        as_script = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/api/v1/auth/me", headers=as_script, verify=cert).json()["name"] == "newbie"
        element(browser, "main button", "Revoke").click()
        confirm(browser)
        until(browser, lambda b: not b.find_elements(By.XPATH, "//main//button[text()='Revoke']"), "the revoked token")
        assert httpx.get(f"{base}/api/v1/auth/me", headers=as_script, verify=cert).status_code == 401
        screenshot(browser, "account")
        element(browser, "#sign-out").click()
        sign_in(browser, base, "newbie", secret)   # now with the code

    with chromium() as browser:
        sign_in(browser, base, "boss")
        element(browser, "#users-link").click()
        form = element(browser, "main form.inline")
        form.find_element(By.NAME, "name").send_keys("fresh")
        form.find_element(By.NAME, "password").send_keys(PASSWORD)
        form.find_element(By.CSS_SELECTOR, "select[name=role] option[value=operator]").click()
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, 'tr[data-user="fresh"]', "operator")
        element(browser, 'tr[data-user="fresh"] button', "Disable").click()
        element(browser, 'tr[data-user="fresh"]', "disabled")
        screenshot(browser, "users")
    with chromium() as browser:
        sign_in(browser, base, "watcher")
        assert not browser.find_element(By.ID, "users-link").is_displayed()


def test_a_policy_created_previewed_disabled_and_deleted(served):
    base, _ = served
    with chromium() as browser:
        sign_in(browser, base, "boss")
        element(browser, "header a", "Policies").click()
        form = element(browser, "main form.inline")
        form.find_element(By.NAME, "name").send_keys("nightly")
        form.find_element(By.NAME, "vms").send_keys("idle")
        keep_last = form.find_element(By.NAME, "keep_last")
        keep_last.clear()
        keep_last.send_keys("3")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, 'tr[data-policy="nightly"]', "keep last 3")
        element(browser, 'tr[data-policy="nightly"] button', "Preview").click()
        element(browser, "#policy-preview", "Next runs")
        element(browser, "#policy-preview td", "idle")
        element(browser, '[data-retention="idle"]', "keeps 0 of 0 backups")
        screenshot(browser, "policies")
        element(browser, 'tr[data-policy="nightly"] button', "Disable").click()
        element(browser, 'tr[data-policy="nightly"]', "disabled")
        element(browser, 'tr[data-policy="nightly"] button', "Delete").click()
        confirm(browser)
        until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, 'tr[data-policy="nightly"]'), "the policy to go")


def test_the_dashboard_with_1000_vms(appliance_data_dir: Path):
    """Measured and printed, not asserted (a shared machine's timings say little)."""
    add_user(appliance_data_dir, "boss", Role.ADMIN)
    appliance = Appliance.open(str(appliance_data_dir))
    spec = appliance.vms.create("vm0000", [MiB]).to_dict()
    with appliance.catalog.begin() as s:   # the other 999 as catalog rows: their disks would add nothing here
        s.add_all(VMRecord(name=f"vm{i:04d}", spec={**spec, "name": f"vm{i:04d}"}) for i in range(1, 1000))
    with console_server(appliance_data_dir) as base, chromium() as browser:
        sign_in(browser, base, "boss")
        element(browser, "header a", "VMs").click()
        element(browser, "tr[data-vm=vm0999]")
        started = time.monotonic()
        element(browser, "header a", "Dashboard").click()
        element(browser, "main[data-page=dashboard] tr[data-vm=vm0999]")
        print(f"\ndashboard with 1000 VMs drawn in {time.monotonic() - started:.2f} s")
        assert "1000 not running" in element(browser, "[data-card=vms]").text
