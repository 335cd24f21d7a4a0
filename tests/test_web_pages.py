"""The console's pages for every resource, end to end in headless Chromium against `cairn serve`
with a real guest VM, as one admin's session: upload an image (its progress, its checksum compared),
create a VM from it with a NIC, add an address pool and a network, back up the VM and boot-test the
backup (its console shown), change its hardware, edit a policy, recycle the VM and restore it from
the recycle bin, find that in the audit log, configure a webhook and have its test message arrive
signed, read the API's reference served by the appliance itself, and see the console at phone width
in dark mode. Every page is kept as a screenshot (web_helpers.SCREENSHOTS)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from libvirt_helpers import libvirt_guest
from libvirtd_server import libvirtd  # noqa: F401  (fixture)
from network_helpers import netns  # noqa: F401  (fixture)
from notification_receivers import SECRET, signature_ok, webhook
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from web_helpers import (
    add_user,
    api_calls,
    chromium,
    click,
    click_on,
    confirm,
    console_server,
    element,
    fill_form,
    fill_form_with,
    forget_api_calls,
    form_with,
    read,
    screenshot,
    sign_in,
    until,
)

from appliance.access.roles import Role
from dedup import Store

pytestmark = pytest.mark.slow
BACKUP_WAIT = 300   # a backup, or a boot test, of a TCG guest on a shared machine


def go(browser, page: str) -> None:
    element(browser, "header nav a", page).click()


def test_every_page_against_a_real_appliance(appliance_data_dir: Path, guest_kernel, netns: str,  # noqa: F811
                                             tmp_path: Path):
    Store.init(appliance_data_dir / "store")
    add_user(appliance_data_dir, "ops", Role.ADMIN)
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "128M"], check=True)
    with console_server(appliance_data_dir) as base, chromium() as browser, webhook() as hook:
        sign_in(browser, base, "ops")

        # An image from this computer: uploaded with a progress bar, its SHA-256 compared with the appliance's.
        go(browser, "Images")
        upload = form_with(browser, "Upload")
        upload.find_element(By.NAME, "file").send_keys(str(image))
        fill_form(upload, {"name": "base", "kind": "disk"})
        upload.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, "#notice", "the same as on this computer")
        element(browser, 'tr[data-image="base"]', "qcow2")
        screenshot(browser, "pages-01-images")

        # An address pool, a network on it (in the test's namespace), and the pool's leases.
        go(browser, "Networks")
        fill_form_with(browser, "Add pool", {"kind": "address", "name": "lan", "subnet": "10.77.0.0/28"})
        click(browser, "main", "Add pool")
        element(browser, 'tr[data-pool="lan"]', "10.77.0.0/28")
        fill_form_with(browser, "Add network", {"name": "net1", "address_pool": "lan", "netns": netns})
        click(browser, "main", "Add network")
        element(browser, 'tr[data-network="net1"]', "10.77.0.1")
        click(browser, 'tr[data-pool="lan"]', "Leases")
        element(browser, "[data-leases] h2", "Leases of lan")
        screenshot(browser, "pages-02-networks")

        # A VM from the uploaded image, with a network card, booting the test guest's kernel.
        go(browser, "VMs")
        create = form_with(browser, "Create VM")
        fill_form(create, {"name": "web1", "image": "base", "nic": "user"})
        create.find_element(By.TAG_NAME, "summary").click()
        fill_form(create, {"kernel": str(guest_kernel.kernel), "initrd": str(guest_kernel.initrd),
                           "append": "console=ttyS0 quiet cairn.mode=idle"})
        create.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, "[data-vm-state=stopped]")
        click(browser, "main", "Start")
        element(browser, "[data-vm-state=running]")
        click(browser, "main", "Back up now")
        element(browser, "main [data-kind=backup] .state-succeeded, main [data-kind=backup] .state-failed",
                timeout=BACKUP_WAIT)
        assert read(browser, "main [data-kind=backup] [class^=state-]") == "succeeded"
        backup_id = read(browser, "tr[data-backup]", "data-backup")

        # The boot test: the backup boots in an isolated VM, and its console is shown.
        click(browser, f'tr[data-backup="{backup_id}"]', "Boot test")
        result = element(browser, f'section[data-boot-test="{backup_id}"]', timeout=BACKUP_WAIT)
        assert result.get_attribute("data-passed") == "true", result.text
        assert "CAIRN: READY" in element(browser, "section[data-boot-test] pre.screen-text").text
        # Its screen, captured at the end of the test, drawn from the PNG the appliance kept.
        shot = element(browser, "section[data-boot-test] img.screen-shot")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", shot) >= 640
        screenshot(browser, "pages-03-vm-boot-tested")

        # Today's square of the backup calendar is green; a second backup, and the store's charts.
        element(browser, "ol.calendar li[data-result=ok]")
        click(browser, "main", "Back up now")
        until(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "tr[data-backup] .status-ok")) == 2,
              "a second good backup", timeout=BACKUP_WAIT)
        go(browser, "Store")
        assert len(element(browser, "[data-charts] svg.chart").find_elements(By.CSS_SELECTOR, "circle.point")) == 2
        screenshot(browser, "pages-04-store-charts")

        # The task log of a backup job: its steps done, its result.
        go(browser, "Jobs")
        element(browser, "tr[data-job-row] a", "backup").click()
        element(browser, "ol[data-steps] li.step-done")
        assert "backup_id" in element(browser, "table[data-result]").text
        screenshot(browser, "pages-05-job-log")

        # One search over VMs, backups and jobs, from the header.
        search = element(browser, "#search")
        search.send_keys("web1", Keys.ENTER)
        element(browser, 'tr[data-found-vm="web1"]')
        element(browser, f'tr[data-found-backup="{backup_id}"]')
        element(browser, "tr[data-found-job]", "backup")
        screenshot(browser, "pages-06-search")
        element(browser, 'tr[data-found-vm="web1"] a').click()

        # Hardware: stopped, it gets a second vCPU.
        click(browser, "main p.actions", "Force off")
        confirm(browser)
        element(browser, "[data-vm-state=stopped]")
        # The stop was a job: the notice says how it went and names it, and the VM's recent jobs list it.
        element(browser, "#notice", "VM web1 stopped: QEMU was ended without the guest shutting down (job ")
        element(browser, 'main a[href^="#/job/"]', "vm.stop")
        click_on(browser, "details[data-hardware] summary", "Hardware")   # the stop job's events redraw the page
        fill_form_with(browser, "Change", {"vcpus": "2"}, within="details[data-hardware]")
        click(browser, "details[data-hardware]", "Change")
        element(browser, "#notice", "2 vCPUs")
        element(browser, "main p.actions", "2 vCPUs")

        # A policy: a bad schedule is refused, saying why; then created, then changed in the same form.
        go(browser, "Policies")
        fill_form_with(browser, "Create policy", {"name": "nightly", "vms": "web*", "schedule": "at two"})
        click(browser, "main", "Create policy")
        element(browser, "#notice.error", "schedule: 'at two' is not a cron expression")
        assert not browser.find_elements(By.CSS_SELECTOR, 'tr[data-policy="nightly"]')
        fill_form_with(browser, "Create policy", {"schedule": "0 2 * * *"})
        click(browser, "main", "Create policy")
        element(browser, 'tr[data-policy="nightly"]', "0 2 * * *")
        click(browser, 'tr[data-policy="nightly"]', "Edit")
        fill_form_with(browser, "Save policy", {"schedule": "30 3 * * 1-5", "keep_daily": "7"})
        click(browser, "main", "Save policy")
        element(browser, 'tr[data-policy="nightly"]', "30 3 * * 1-5")
        element(browser, 'tr[data-policy="nightly"]', "daily 7")
        assert read(browser, 'tr[data-policy="nightly"] td:nth-child(6)') == "never"      # last run
        assert read(browser, 'tr[data-policy="nightly"] td:nth-child(7)') not in ("", "–")  # next run
        # The store's upkeep on a schedule: a verify policy selects no VMs, it samples the store.
        fill_form_with(browser, "Create policy", {"kind": "verify", "name": "sunday-check",
                                                        "schedule": "0 3 * * 0", "sample_percent": "10"})
        assert not form_with(browser, "Create policy").find_element(By.NAME, "vms").is_displayed()
        click(browser, "main", "Create policy")
        element(browser, 'tr[data-policy="sunday-check"]', "verify 10% of the chunks")
        screenshot(browser, "pages-07-policies")

        # Deleted into the recycle bin, and back.
        go(browser, "VMs")
        click(browser, 'tr[data-vm="web1"]', "Delete")
        assert any("recycle bin" in t for t in confirm(browser))
        until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, 'tr[data-vm="web1"]'), "web1 to leave the list")
        go(browser, "Recycle bin")
        element(browser, 'tr[data-recycled="web1"]', "vm")
        screenshot(browser, "pages-08-recycle-bin")
        click(browser, 'tr[data-recycled="web1"]', "Restore")
        element(browser, "#notice", "Restored vm web1")
        element(browser, "main td", "the recycle bin is empty")
        go(browser, "VMs")
        element(browser, 'tr[data-vm="web1"]', "stopped")
        # One round trip per action: the start's answer carries the VM's new state, and its row is drawn from it.
        forget_api_calls(browser)
        click(browser, 'tr[data-vm="web1"]', "Start")
        element(browser, 'tr[data-vm="web1"] .state-running')
        assert api_calls(browser) == ["/api/v1/vms/web1/start"]
        element(browser, "#notice", "VM web1 running (job ")
        click(browser, 'tr[data-vm="web1"]', "Force off")
        confirm(browser)
        element(browser, 'tr[data-vm="web1"] .state-stopped')

        # The audit log says who did it, searched by what was done.
        go(browser, "Audit")
        element(browser, "main input[name=text]").send_keys("recycle-bin")
        restore_entry = element(browser, "tr[data-audit]", "/restore")
        assert "ops" in restore_entry.text and "POST /api/v1/recycle-bin/" in restore_entry.text, restore_entry.text
        until(browser, lambda b: all("recycle-bin" in r.text for r in b.find_elements(By.CSS_SELECTOR, "tr[data-audit]")),
              "the search to leave only recycle-bin calls")
        screenshot(browser, "pages-09-audit")

        # A webhook, and its test message, signed with the secret.
        go(browser, "Notifications")
        fill_form_with(browser, "Add target", {"kind": "webhook", "name": "ops-hook", "url": hook.url,
                                                      "secret": SECRET})
        click(browser, "main", "Add target")
        element(browser, 'tr[data-target="ops-hook"]', "(signed)")
        click(browser, 'tr[data-target="ops-hook"]', "Send test message")
        element(browser, "#notice", "Target ops-hook took the test message.")
        assert len(hook.received) == 1
        message = hook.received[0]
        assert signature_ok(SECRET, message["headers"]["X-Cairn-Signature"], message["body"])
        # A rule's threshold, and quiet hours, saved and shown again.
        threshold = element(browser, 'tr[data-rule="store.fill"] input[name=threshold_percent]')
        threshold.clear()
        threshold.send_keys("80")
        click(browser, 'tr[data-rule="store.fill"]', "Save")
        element(browser, "#notice", "Rule store.fill saved.")
        until(browser, lambda b: read(b, 'tr[data-rule="store.fill"] input[name=threshold_percent]', "value") == "80",
              "the page drawn again with the saved threshold")
        fill_form_with(browser, "Save quiet hours", {"timezone": "UTC"})
        click(browser, "main", "Save quiet hours")
        element(browser, "[data-quiet-hours]", "Messages wait from 22:00 to 07:00 (UTC)")
        screenshot(browser, "pages-10-notifications")

        go(browser, "Hosts")
        element(browser, "main td", "no other hosts")
        screenshot(browser, "pages-11-hosts")

        # The keyboard alone reaches a page: Tab to its link, Enter.
        browser.find_element(By.TAG_NAME, "body").click()
        for _ in range(20):
            browser.switch_to.active_element.send_keys(Keys.TAB)
            if browser.switch_to.active_element.text == "Images":
                break
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        element(browser, "main[data-page=images] h1", "Images")

        # The API's reference, from the appliance itself (vendored Swagger UI, no CDN).
        browser.get(f"{base}/api/v1/docs")
        element(browser, ".swagger-ui .info .title", "Cairn")
        element(browser, ".swagger-ui .opblock-tag", "auth")
        screenshot(browser, "pages-12-api-docs")

        # A phone, in dark mode: the page fits the screen's width, and the colours are the dark ones.
        browser.set_window_size(390, 844)
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                                {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        browser.get(f"{base}/ui/#/vms")
        element(browser, 'tr[data-vm="web1"]')
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(20, 24, 31)", background
        screenshot(browser, "pages-13-phone-dark")


def test_a_libvirt_hosts_vms_started_and_backed_up_in_the_browser(appliance_data_dir: Path, libvirtd,  # noqa: F811
                                                                     guest_kernel):
    Store.init(appliance_data_dir / "store")
    add_user(appliance_data_dir, "ops", Role.ADMIN)
    with (console_server(appliance_data_dir) as base, chromium() as browser,
          libvirt_guest(libvirtd, "webguest", guest_kernel, start=False) as guest):
        sign_in(browser, base, "ops")
        go(browser, "Hosts")
        fill_form_with(browser, "Add host", {"name": "kvm1", "kind": "libvirt", "uri": libvirtd.uri,
                                                  "libvirt_dir": str(libvirtd.lib_dir)})
        click(browser, "main", "Add host")
        click(browser, 'tr[data-host="kvm1"]', "VMs")
        element(browser, 'tr[data-host-vm="webguest"]', "stopped")
        click(browser, 'tr[data-host-vm="webguest"]', "Start")
        element(browser, 'tr[data-host-vm="webguest"] .state-running')
        guest.wait_serial("CAIRN: READY")
        click(browser, 'tr[data-host-vm="webguest"]', "Back up")
        element(browser, "#notice", "Backed up webguest of kvm1: backup ", timeout=BACKUP_WAIT)
        screenshot(browser, "pages-14-libvirt-host")
        click(browser, 'tr[data-host-vm="webguest"]', "Stop")
        element(browser, 'tr[data-host-vm="webguest"] .state-stopped', timeout=BACKUP_WAIT)
