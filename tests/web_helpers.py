"""Helpers for the console's browser tests: a real `cairn serve`, headless Chromium through selenium,
users with TOTP, and waiting for what the page shows.

Screenshots go to build/screenshots/console (or $CAIRN_SCREENSHOTS): CI keeps that folder, so a
person can look at each page."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pyotp
from selenium import webdriver
from selenium.common.exceptions import (
    ElementNotInteractableException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from appliance.access.roles import Role
from appliance.context import Appliance

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("CAIRN_SCREENSHOTS") or REPO / "build" / "screenshots" / "console")
START_TIMEOUT = 120   # a shared 2-core machine: importing and starting can take a while
WAIT = 60             # for what a page shows; TCG guests and a busy machine make everything slow
PASSWORD = "a console test password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def console_server(data_dir: Path, catalog_url: str | None = None) -> Iterator[str]:
    """`cairn serve` on a free port with its generated certificate (and the data dir's catalog,
    or `catalog_url`); yields the base URL. Its log goes to a file (a pipe nobody reads would
    fill up and stall it)."""
    port = _free_port()
    env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir)}
    if catalog_url is not None:
        env["CAIRN_CATALOG_URL"] = catalog_url
    log_path = data_dir / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(base, data_dir / "tls" / "cert.pem"):
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "cairn serve did not answer:\n" + log_path.read_text()
            time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


def _answers(base: str, cert: Path) -> bool:
    if not cert.exists():
        return False
    try:
        return httpx.get(f"{base}/api/v1/health", verify=ssl.create_default_context(cafile=str(cert)),
                         timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def api_client_of(base: str, data_dir: Path, user: str) -> Iterator[httpx.Client]:
    """A client of the server's API, signed in as `user` (PASSWORD, no TOTP), checking its certificate."""
    with httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=str(data_dir / "tls" / "cert.pem")),
                      timeout=60) as client:
        login = client.post("/api/v1/auth/login", json={"username": user, "password": PASSWORD})
        assert login.status_code == 200, login.text
        client.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield client


def add_user(data_dir: Path, name: str, role: Role, totp: bool = False, catalog_url: str | None = None) -> str | None:
    """A user with PASSWORD; with `totp`, enrolled and confirmed, and its secret returned.

    The confirmation uses the previous 30 s step's code, so the current one (what an authenticator
    shows) is still good for signing in at once."""
    users = Appliance.open(str(data_dir), catalog_url).users
    users.create(name, PASSWORD, role)
    if not totp:
        return None
    secret = users.enrol_totp(name).secret
    users.confirm_totp(name, previous_totp_code(secret))
    return secret


def previous_totp_code(secret: str, margin: float = 10.0) -> str:
    """The previous 30 s step's code, taken well inside a step: one taken just before the step
    turns is two steps old by the time the appliance checks it, and refused."""
    if (left := 30 - time.time() % 30) < margin:
        time.sleep(left + 0.2)
    return pyotp.TOTP(secret).at(time.time() - 30)


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     # the appliance's generated certificate is self-signed; the API tests check it is served
                     "--ignore-certificate-errors"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))
    try:
        yield browser
    finally:
        browser.quit()


def until(browser: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], what: str,
          timeout: float = WAIT) -> Any:
    """Wait for `condition` to be truthy; a timeout names `what` was awaited and shows the notice."""
    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.3).until(condition)
    except TimeoutException as e:
        shot = screenshot(browser, "failed-wait")
        raise AssertionError(f"waited {timeout} s for {what}; the page says: {notice(browser)!r}; "
                             f"it looked like {shot}") from e


def element(browser: webdriver.Chrome, css: str, text: str | None = None, timeout: float = WAIT) -> WebElement:
    """The first visible element matching `css` (and containing `text`), once there is one."""
    def found(b: webdriver.Chrome) -> WebElement | None:
        for el in b.find_elements(By.CSS_SELECTOR, css):
            try:
                if el.is_displayed() and (text is None or text in el.text):
                    return el
            except StaleElementReferenceException:   # redrawn while looked at: look again
                continue
        return None
    return until(browser, found, f"{css} {text or ''}".strip(), timeout)


def button(browser: webdriver.Chrome, scope_css: str, label: str, timeout: float = WAIT) -> WebElement:
    return element(browser, f"{scope_css} button", label, timeout)


def click(browser: webdriver.Chrome, scope_css: str, label: str, timeout: float = WAIT) -> None:
    """Click a button, found again if the page redrew it in between: a page redraws on every job
    event it hears (one of its own jobs starting or ending, say)."""
    click_on(browser, f"{scope_css} button", label, timeout)


def click_on(browser: webdriver.Chrome, css: str, text: str, timeout: float = WAIT) -> None:
    """Click the element matching `css` that contains `text` (a link, a button), found again if
    the page redrew it in between."""
    def clicked(b: webdriver.Chrome) -> bool:
        try:
            element(b, css, text, timeout).click()
        except StaleElementReferenceException:
            return False
        return True
    until(browser, clicked, f"a click on {text!r} in {css}", timeout)


def choose(browser: webdriver.Chrome, scope_css: str, menu: str, label: str, timeout: float = WAIT) -> None:
    """Open the menu `menu` (a details.menu) in `scope_css` and click its item `label`; opened
    again if a redraw closed it in between."""
    def chosen(b: webdriver.Chrome) -> bool:
        try:
            summary = element(b, f"{scope_css} details.menu > summary", menu, timeout)
            opened = summary.find_element(By.XPATH, "..")
            if opened.get_attribute("open") is None:
                summary.click()
            item = next((e for e in opened.find_elements(By.CSS_SELECTOR, "button")
                         if e.is_displayed() and label in e.text), None)
            if item is None:
                return False
            item.click()
        except StaleElementReferenceException:
            return False
        return True
    until(browser, chosen, f"{label!r} in the menu {menu!r} of {scope_css}", timeout)


def read(browser: webdriver.Chrome, css: str, attribute: str | None = None) -> str | None:
    """The text (or an attribute) of the first element matching `css`, read in one go: no element
    is held that a redraw could make stale."""
    return browser.execute_script("const e = document.querySelector(arguments[0]);"
                                  "return e && (arguments[1] ? e.getAttribute(arguments[1]) : e.textContent);",
                                  css, attribute)


def notice(browser: webdriver.Chrome) -> str:
    found = browser.find_elements(By.ID, "notice")
    return found[0].text if found else ""


def fill_form(form: WebElement, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = form.find_element(By.NAME, name)
        if field.tag_name == "select":
            field.find_element(By.CSS_SELECTOR, f'option[value="{value}"]').click()
        else:
            field.clear()
            field.send_keys(value)


def form_with(browser: webdriver.Chrome, button_label: str) -> WebElement:
    """The form whose submit button says `button_label`."""
    return element(browser, "form.inline button[type=submit]", button_label).find_element(By.XPATH, "./ancestor::form")


def fill_form_with(browser: webdriver.Chrome, button_label: str, values: dict[str, str],
                   within: str | None = None) -> None:
    """Fill the form whose submit button says `button_label`, found again if the page redrew it
    before the typing began (a job's events redraw a page; once a field has the focus, live()
    waits for the typing to stop). A form inside the <details> `within` is typed into once that
    is open: opened again if its fields stopped taking keys between the look and the typing."""
    def filled(b: webdriver.Chrome) -> bool:
        try:
            if within is not None:
                open_details(b, within)
            fill_form(form_with(b, button_label), values)
        except (StaleElementReferenceException, ElementNotInteractableException):
            return False
        return True
    until(browser, filled, f"the form of {button_label!r} filled in")


def open_details(browser: webdriver.Chrome, css: str) -> None:
    """Open the <details> matching `css` by clicking its summary, unless it is open."""
    details = element(browser, css)
    if details.get_attribute("open") is None:
        details.find_element(By.CSS_SELECTOR, ":scope > summary").click()


def forget_api_calls(browser: webdriver.Chrome) -> None:
    browser.execute_script("performance.clearResourceTimings();")


def api_calls(browser: webdriver.Chrome) -> list[str]:
    """The paths of the API calls the page made since forget_api_calls() (the browser's resource timing)."""
    return browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => new URL(e.name))"
        ".filter((u) => u.pathname.startsWith('/api/v1/')).map((u) => u.pathname);")


def sign_in(browser: webdriver.Chrome, base: str, user: str, secret: str | None = None) -> None:
    """Sign in through the form; with a TOTP `secret`, answer the code prompt it brings up."""
    browser.get(f"{base}/ui/")
    form = element(browser, "#login")
    form.find_element(By.NAME, "username").send_keys(user)
    form.find_element(By.NAME, "password").send_keys(PASSWORD)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    if secret is not None:
        code = element(browser, "#totp-field input")
        code.send_keys(pyotp.TOTP(secret).now())
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    element(browser, "#whoami", user)


def confirm(browser: webdriver.Chrome) -> list[str]:
    """Accept the open confirmation dialog; returns what it said the action takes."""
    dialog = element(browser, "dialog#confirm[open]")
    takes = [li.text for li in dialog.find_elements(By.CSS_SELECTOR, "#confirm-takes li")]
    dialog.find_element(By.ID, "confirm-ok").click()
    return takes


def screenshot(browser: webdriver.Chrome, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def allow_downloads(browser: webdriver.Chrome, folder: Path) -> None:
    """Downloads land in `folder` without asking (headless Chromium refuses them otherwise)."""
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
