"""One round trip per action, page by page, in headless Chromium against `cairn serve` (one admin's
session): users, one's account (a token issued and revoked, TOTP turned on), images, networks and
pools, notification targets, rules and quiet hours, a libvirt host (added, its VM started, removed)
and scheduling groups, and a VM's size. Each action's
answer carries the new state (a 204 deletion: the row goes), so the page makes exactly one request
for it and draws what changed from the answer (docs/console.md, "One round trip per action")."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pyotp
import pytest
from libvirt_helpers import libvirt_guest
from libvirtd_server import libvirtd  # noqa: F401  (fixture)
from network_helpers import netns  # noqa: F401  (fixture)
from selenium.webdriver.common.by import By
from web_helpers import (
    add_user,
    api_calls,
    chromium,
    click,
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
from appliance.context import Appliance
from dedup import Store

pytestmark = pytest.mark.slow


def gone(browser, css: str) -> None:
    until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, css), f"{css} gone")


def submit(browser, label: str, values: dict[str, str]) -> None:
    """Fill the form whose button says `label` and send it, counting the API calls from here."""
    fill_form_with(browser, label, values)
    forget_api_calls(browser)
    click(browser, "main", label)


def test_each_action_makes_one_request_and_draws_its_answer(appliance_data_dir: Path, netns: str,  # noqa: F811
                                                            libvirtd, guest_kernel, tmp_path: Path):  # noqa: F811
    Store.init(appliance_data_dir / "store")
    add_user(appliance_data_dir, "root", Role.ADMIN)
    add_user(appliance_data_dir, "bob", Role.VIEWER)
    Appliance.open(str(appliance_data_dir)).vms.create("web", [8 << 20])
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    with (console_server(appliance_data_dir) as base, chromium() as browser,
          libvirt_guest(libvirtd, "other", guest_kernel, start=False)):
        sign_in(browser, base, "root")

        # Users: a role changed, a user disabled, created and deleted.
        browser.get(f"{base}/ui/#/users")
        element(browser, 'tr[data-user="bob"]', "active")
        forget_api_calls(browser)
        click(browser, 'tr[data-user="bob"]', "Disable")
        element(browser, 'tr[data-user="bob"]', "disabled")
        assert api_calls(browser) == ["/api/v1/users/bob"]
        submit(browser, "Create user", {"name": "carol", "password": "a long enough password", "role": "operator"})
        element(browser, 'tr[data-user="carol"]', "active")
        assert read(browser, 'tr[data-user="carol"] select[name=role]', None) is not None
        assert api_calls(browser) == ["/api/v1/users"]
        forget_api_calls(browser)
        click(browser, 'tr[data-user="carol"]', "Delete")
        confirm(browser)
        gone(browser, 'tr[data-user="carol"]')
        assert api_calls(browser) == ["/api/v1/users/carol"]

        # One's account: a token issued (shown once) and revoked; TOTP turned on.
        browser.get(f"{base}/ui/#/account")
        submit(browser, "Create token", {"name": "ci"})
        element(browser, "[data-new-token]")
        token_id = element(browser, "main tr", "ci").find_element(By.CSS_SELECTOR, "td").text
        assert api_calls(browser) == ["/api/v1/tokens"]
        forget_api_calls(browser)
        click(browser, "main tr", "Revoke")
        confirm(browser)
        element(browser, "main tr", "revoked")
        gone(browser, "[data-new-token]")
        assert api_calls(browser) == [f"/api/v1/tokens/{token_id}"]
        click(browser, "main", "Set up TOTP")
        secret = element(browser, "[data-totp-secret]").text
        submit(browser, "Turn TOTP on", {"code": pyotp.TOTP(secret).now()})
        element(browser, "main p", "TOTP is on")
        assert api_calls(browser) == ["/api/v1/auth/totp/confirm"]

        # Images: uploaded (the upload's answer is the image), deleted (a 204: the row goes).
        browser.get(f"{base}/ui/#/images")
        upload = form_with(browser, "Upload")
        upload.find_element(By.NAME, "file").send_keys(str(image))
        fill_form(upload, {"name": "base", "kind": "disk"})
        forget_api_calls(browser)
        upload.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, 'tr[data-image="base"]', "qcow2")
        assert api_calls(browser) == ["/api/v1/images/base"]
        forget_api_calls(browser)
        click(browser, 'tr[data-image="base"]', "Delete")
        element(browser, "main td", "no images yet")
        assert api_calls(browser) == ["/api/v1/images/base"]

        # Networks and pools: each added and deleted; the new pool is offered to the network form at once.
        browser.get(f"{base}/ui/#/networks")
        submit(browser, "Add pool", {"kind": "address", "name": "lan", "subnet": "10.79.0.0/28"})
        element(browser, 'tr[data-pool="lan"]', "10.79.0.0/28")
        assert api_calls(browser) == ["/api/v1/pools"]
        submit(browser, "Add network", {"name": "net1", "address_pool": "lan", "netns": netns})
        element(browser, 'tr[data-network="net1"]', "10.79.0.1")
        assert api_calls(browser) == ["/api/v1/networks"]
        forget_api_calls(browser)
        click(browser, 'tr[data-network="net1"]', "Delete")
        gone(browser, 'tr[data-network="net1"]')
        click(browser, 'tr[data-pool="lan"]', "Delete")
        gone(browser, 'tr[data-pool="lan"]')
        assert api_calls(browser) == ["/api/v1/networks/net1", "/api/v1/pools/address/lan"]

        # Notifications: a target added and deleted, a rule disabled, quiet hours set and cleared.
        browser.get(f"{base}/ui/#/notifications")
        submit(browser, "Add target", {"kind": "webhook", "name": "hook", "url": "https://hooks.example/cairn"})
        element(browser, 'tr[data-target="hook"]', "(unsigned)")
        element(browser, 'tr[data-rule="store.fill"] option[value="hook"]')
        assert api_calls(browser) == ["/api/v1/notifications/targets"]
        forget_api_calls(browser)
        click(browser, 'tr[data-rule="store.fill"]', "Disable")
        element(browser, 'tr[data-rule="store.fill"] button', "Enable")
        assert api_calls(browser) == ["/api/v1/notifications/rules/store.fill"]
        submit(browser, "Save quiet hours", {"timezone": "UTC"})
        element(browser, "[data-quiet-hours]", "Messages wait from 22:00 to 07:00 (UTC)")
        forget_api_calls(browser)
        click(browser, "main", "No quiet hours")
        element(browser, "[data-quiet-hours]", "No quiet hours")
        forget_api_calls(browser)
        click(browser, 'tr[data-target="hook"]', "Delete")
        gone(browser, 'tr[data-target="hook"]')
        assert api_calls(browser) == ["/api/v1/notifications/targets/hook"]
        screenshot(browser, "round-trips-notifications")

        # Hosts: a libvirt host added, its VM started (not waited for: the answer is the domain
        # running), the host removed; a scheduling group saved and deleted.
        browser.get(f"{base}/ui/#/hosts")
        submit(browser, "Add host", {"name": "kvm1", "kind": "libvirt", "uri": libvirtd.uri,
                                     "libvirt_dir": str(libvirtd.lib_dir)})
        element(browser, 'tr[data-host="kvm1"]', libvirtd.uri)
        assert api_calls(browser) == ["/api/v1/hosts"]
        click(browser, 'tr[data-host="kvm1"]', "VMs")
        element(browser, 'tr[data-host-vm="other"]', "stopped")
        forget_api_calls(browser)
        click(browser, 'tr[data-host-vm="other"]', "Start")
        element(browser, 'tr[data-host-vm="other"] .state-running')
        assert api_calls(browser) == ["/api/v1/hosts/kvm1/vms/other/start"]
        forget_api_calls(browser)
        click(browser, 'tr[data-host="kvm1"]', "Remove")
        element(browser, "main td", "no other hosts")
        gone(browser, "[data-host-vms] h2")
        assert api_calls(browser) == ["/api/v1/hosts/kvm1"]
        submit(browser, "Save group", {"name": "apart", "policy": "vm-anti-affinity", "vms": "web"})
        element(browser, 'tr[data-group="apart"]', "vm-anti-affinity")
        assert api_calls(browser) == ["/api/v1/scheduling-groups/apart"]
        forget_api_calls(browser)
        click(browser, 'tr[data-group="apart"]', "Delete")
        element(browser, "main td", "no scheduling groups")
        assert api_calls(browser) == ["/api/v1/scheduling-groups/apart"]

        # A VM: its vCPUs and memory changed, its disk grown.
        browser.get(f"{base}/ui/#/vm/web")
        element(browser, "[data-vm-state=stopped]")
        element(browser, "details[data-hardware] summary").click()
        submit(browser, "Change", {"vcpus": "2", "memory_mib": "96"})
        element(browser, "main p.actions", "2 vCPUs · 96 MiB")
        element(browser, "details[data-hardware][open]")
        assert api_calls(browser) == ["/api/v1/vms/web"]
        disk = read(browser, "tr[data-disk]", "data-disk")
        submit(browser, "Grow", {"size": "16M"})
        element(browser, "#notice", f"Disk {disk} of web is now")
        assert api_calls(browser) == [f"/api/v1/vms/web/disks/{disk}/resize"]
