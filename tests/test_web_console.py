"""The console end to end in headless Chromium, against `cairn serve` with a real guest VM: sign in
with TOTP, create a VM, start it and see its screen, snapshot it twice and see the tree, be told why
a revert is refused, delete a snapshot by commit, back up and watch the job finish, restore as a new
VM and instantly, be refused a restore over the running VM, delete a VM after reading what it
takes, preview GC and a prune, and the dashboard following.

Each main page is kept as a screenshot (web_helpers.SCREENSHOTS)."""
from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from web_helpers import (
    add_user,
    choose,
    chromium,
    click,
    click_on,
    confirm,
    console_server,
    element,
    read,
    screenshot,
    sign_in,
    until,
)

from appliance.access.roles import Role
from dedup import Store
from vmm import image_info

pytestmark = pytest.mark.slow
BACKUP_WAIT = 300   # a backup of a TCG guest on a shared machine


def create_vm_in_form(browser, guest_kernel, name: str) -> None:
    form = element(browser, "form.inline")
    form.find_element(By.NAME, "name").send_keys(name)
    form.find_element(By.NAME, "disks").send_keys("128M")
    form.find_element(By.TAG_NAME, "summary").click()
    form.find_element(By.NAME, "kernel").send_keys(str(guest_kernel.kernel))
    form.find_element(By.NAME, "initrd").send_keys(str(guest_kernel.initrd))
    form.find_element(By.NAME, "append").send_keys("console=ttyS0 quiet cairn.mode=idle")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def take_snapshot(browser, name: str) -> None:
    element(browser, "form.inline input[name=name][placeholder]").send_keys(name)
    click(browser, "main", "Take snapshot")


def dashboard_row(browser, vm: str) -> list[str]:
    row = element(browser, f'main[data-page=dashboard] tr[data-vm="{vm}"]')
    return [td.text for td in row.find_elements(By.TAG_NAME, "td")]


def row_layout(browser: webdriver.Chrome, row: WebElement) -> dict:
    """The labels of a backup row's actions as shown, on how many lines they are drawn, and on
    how many lines its ID is."""
    return browser.execute_script("""
        const row = arguments[0];
        const shown = [...row.querySelectorAll("td.actions > button, td.actions > details > summary, td.actions > a")]
          .filter((e) => e.offsetParent !== null);
        const middles = shown.map((e) => { const r = e.getBoundingClientRect(); return (r.top + r.bottom) / 2; });
        const id = document.createRange();
        id.selectNodeContents(row.cells[0].firstChild);
        return { labels: shown.map((e) => e.textContent),
                 lines: new Set(middles.map((m) => Math.round((m - middles[0]) / 12))).size,
                 id_lines: id.getClientRects().length };""", row)


def as_console(browser: webdriver.Chrome, method: str, path: str, body: dict | None = None) -> dict:
    """An API call with the console's own session (its token is in the tab's sessionStorage): for
    what the console does not offer, e.g. an instant restore at a given speed."""
    answer = browser.execute_async_script("""
        const [method, path, body, done] = arguments;
        const token = JSON.parse(sessionStorage.getItem("cairn.session")).token;
        fetch(`/api/v1${path}`, { method, body: body === null ? undefined : JSON.stringify(body),
                                  headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" } })
          .then(async (r) => done({ status: r.status, body: await r.json() }));""", method, path, body)
    assert answer["status"] < 300, answer
    return answer["body"]


def wait_for_job(browser: webdriver.Chrome, job_id: str) -> None:
    def ended(b: webdriver.Chrome) -> bool:
        job = as_console(b, "GET", f"/jobs/{job_id}")
        assert job["state"] in ("queued", "running", "succeeded"), job
        return job["state"] == "succeeded"
    until(browser, ended, f"job {job_id}", BACKUP_WAIT)


def test_sign_in_create_snapshot_back_up_restore_and_watch_the_dashboard(appliance_data_dir: Path, guest_kernel,
                                                                         tmp_path: Path):
    Store.init(appliance_data_dir / "store")
    secret = add_user(appliance_data_dir, "ops", Role.ADMIN, totp=True)
    with console_server(appliance_data_dir) as base, chromium() as browser:
        browser.get(f"{base}/ui/")
        element(browser, "#login")
        screenshot(browser, "01-sign-in")
        sign_in(browser, base, "ops", secret)
        assert "0 running" in element(browser, "[data-card=vms]").text
        screenshot(browser, "02-dashboard-empty")

        element(browser, "header a", "VMs").click()
        create_vm_in_form(browser, guest_kernel, "web1")
        element(browser, "[data-vm-state=stopped]")
        element(browser, "header a", "Dashboard").click()
        assert dashboard_row(browser, "web1")[1:] == ["stopped", "never", "–"]
        element(browser, "main[data-page=dashboard] a", "web1").click()
        click(browser, "main", "Start")
        element(browser, "[data-vm-state=running]")
        click_on(browser, "main a.console", "Console")   # the start job's events redraw the page
        element(browser, "[data-console-state=connected]")   # noVNC through the appliance's WebSocket proxy
        element(browser, ".screen canvas")
        screenshot(browser, "03-vm-console")
        element(browser, "main a", "back to VM web1").click()

        take_snapshot(browser, "before-upgrade")
        # Drawn as a tree: the VM's current state hangs under the new snapshot.
        element(browser, 'li[data-snapshot="before-upgrade"] > ul > li[data-now]')
        take_snapshot(browser, "after-upgrade")
        element(browser, 'li[data-snapshot="before-upgrade"] > ul > li[data-snapshot="after-upgrade"] > ul > li[data-now]')
        screenshot(browser, "04-vm-snapshot-tree")

        # A revert the VM's state refuses (running, no memory state) says why and changes nothing.
        click(browser, 'li[data-snapshot="before-upgrade"] .node', "Revert")
        confirm(browser)
        element(browser, "#notice.error", "stop")
        element(browser, 'li[data-snapshot="after-upgrade"] > ul > li[data-now]')

        click(browser, 'li[data-snapshot="before-upgrade"] .node', "Delete")
        element(browser, "#confirm-extra select option[value=commit]").click()
        assert any("is merged" in line for line in confirm(browser))
        until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, 'li[data-snapshot="before-upgrade"]'),
              "the deleted snapshot to leave the tree")
        element(browser, 'li[data-snapshot="after-upgrade"] > ul > li[data-now]')

        click(browser, "main", "Back up now")
        # The job shows with its live progress bar (among the VM's snapshot jobs: one path per operation).
        element(browser, "main [data-kind=backup] progress")
        element(browser, "main [data-kind=backup] .state-succeeded, main [data-kind=backup] .state-failed",
                timeout=BACKUP_WAIT)
        ended = "main [data-kind=backup]"
        assert read(browser, f"{ended} [class^=state-]") == "succeeded", read(browser, ended, "title")
        element(browser, "tr[data-backup]", "ok")
        backup_id = read(browser, "tr[data-backup]", "data-backup")
        screenshot(browser, "05-vm-backed-up")

        element(browser, "header a", "Dashboard").click()
        assert "ok (full)" in dashboard_row(browser, "web1")[3]
        assert "1 running" in element(browser, "[data-card=vms]").text
        assert "1" in element(browser, "[data-card=backups] .big").text

        browser.get(f"{base}/ui/#/vm/web1")
        # A backup's row is one line: its ID whole, its actions side by side, the four ways to
        # restore it in one menu (it had eight buttons, and its ID wrapped).
        row = element(browser, f'tr[data-backup="{backup_id}"]', "Restore…")
        assert row_layout(browser, row) == {
            "labels": ["Restore…", "Boot test", "Protect", "Lock until…", "files of vda", "Delete"], "lines": 1,
            "id_lines": 1}
        choose(browser, f'tr[data-backup="{backup_id}"]', "Restore…", "Restore as new VM")
        assert element(browser, "#confirm-extra input").get_attribute("value") == "web1-restored"
        confirm(browser)
        element(browser, "#notice", "Restored ", timeout=BACKUP_WAIT)

        # Over the running VM without shutting it down: refused, and said why.
        choose(browser, f'tr[data-backup="{backup_id}"]', "Restore…", "Restore over VM")
        confirm(browser)
        element(browser, "#notice.error", "stop it first")
        element(browser, "[data-vm-state=running]")

        choose(browser, f'tr[data-backup="{backup_id}"]', "Restore…", "Instant restore")
        confirm(browser)
        element(browser, "#notice", "VM web1-instant runs from backup", timeout=BACKUP_WAIT)

        # One disk to a file the admin names (outside the data dir): complete, verified, in the format asked for.
        target = tmp_path / "vda-copy.qcow2"
        choose(browser, f'tr[data-backup="{backup_id}"]', "Restore…", "Restore vda to…")
        element(browser, "#confirm-extra input[name=target]").send_keys(str(target))
        confirm(browser)
        element(browser, "#notice", f"to {target} ", timeout=BACKUP_WAIT)
        assert image_info(str(target))["format"] == "qcow2"

        # The instantly restored VM's page follows the copy of the backup into its disks to its end.
        browser.get(f"{base}/ui/#/vm/web1-instant")
        element(browser, "[data-instant-restore=done]",
                f"Copy complete: the disks hold all of backup {backup_id}", timeout=BACKUP_WAIT)
        # One copied at 64 KiB/s (through the API): its page shows the copy going on, disk by disk,
        # then complete once it is let go at full speed, without being opened again.
        restoring = as_console(browser, "POST", f"/backups/{backup_id}/instant-restore",
                               {"name": "web1-slow", "speed": 64 << 10})
        wait_for_job(browser, restoring["id"])
        browser.get(f"{base}/ui/#/vm/web1-slow")
        element(browser, "[data-instant-restore=hydrating]", f"Copying backup {backup_id} into the disks")
        element(browser, "[data-instant-restore=hydrating] li[data-disk=vda] progress")
        screenshot(browser, "05b-instant-restore-copying")
        as_console(browser, "POST", "/instant-restores/web1-slow/speed", {"speed": 0})
        element(browser, "[data-instant-restore=done]", "Copy complete", timeout=BACKUP_WAIT)
        as_console(browser, "POST", "/vms/web1-slow/stop", {"force": True})

        element(browser, "header a", "Dashboard").click()
        assert dashboard_row(browser, "web1-restored")[1] == "stopped"
        assert dashboard_row(browser, "web1-instant")[1] == "running"
        assert "2 running" in element(browser, "[data-card=vms]").text
        screenshot(browser, "06-dashboard")

        element(browser, "header a", "VMs").click()
        click(browser, 'tr[data-vm="web1-restored"]', "Delete")
        takes = confirm_after_reading(browser)
        assert any(t.startswith("disk vda (") for t in takes), takes
        assert "no backups: it has none" in takes and any("recycle bin" in t for t in takes), takes
        until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, 'tr[data-vm="web1-restored"]'),
              "the deleted VM to leave the list")
        screenshot(browser, "07-vms")

        element(browser, "header a", "Jobs").click()
        element(browser, "tr[data-job-row] .state-succeeded")
        screenshot(browser, "08-jobs")

        element(browser, "header a", "Store").click()
        assert element(browser, "[data-stats]").text.startswith("Backups 1 ")
        click(browser, "main", "GC preview")
        element(browser, "[data-gc-report]", "Would remove")
        keep_last = element(browser, "main form.inline input[name=keep_last]")
        keep_last.clear()
        keep_last.send_keys("1")
        click(browser, "main form.inline", "Preview prune")
        element(browser, "[data-prune-preview]", "keep-last 1")
        element(browser, "[data-prune-preview]", "Nothing would be removed")
        screenshot(browser, "09-store")


def confirm_after_reading(browser) -> list[str]:
    """Cancel once (nothing happens), then open the dialog again and confirm."""
    element(browser, "dialog#confirm[open]")
    browser.find_element(By.CSS_SELECTOR, "dialog#confirm button[value=cancel]").click()
    assert element(browser, 'tr[data-vm="web1-restored"]')
    click(browser, 'tr[data-vm="web1-restored"]', "Delete")
    return confirm(browser)
