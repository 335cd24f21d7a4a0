"""The VM page's hardware section in headless Chromium against `cairn serve`: a stopped VM gets a
disk and a network card and loses them again, each change shown from the API's answer alone (one
request per action), a refusal shown in the API's words; a VM created with its NIC on a network."""
from __future__ import annotations

from pathlib import Path

import pytest
from network_helpers import netns  # noqa: F401  (fixture)
from selenium.webdriver.common.by import By
from web_helpers import (
    add_user,
    api_calls,
    api_client_of,
    chromium,
    click,
    confirm,
    console_server,
    element,
    fill_form,
    fill_form_with,
    forget_api_calls,
    form_with,
    screenshot,
    sign_in,
    until,
)

from appliance.access.roles import Role
from dedup import Store

pytestmark = pytest.mark.slow


def test_a_disk_and_a_nic_added_and_removed_in_the_browser(appliance_data_dir: Path, netns: str):  # noqa: F811
    Store.init(appliance_data_dir / "store")
    add_user(appliance_data_dir, "ops", Role.ADMIN)
    with console_server(appliance_data_dir) as base, chromium() as browser:
        with api_client_of(base, appliance_data_dir, "ops") as api:
            assert api.post("/api/v1/vms", json={"name": "box", "disks": ["16M"]}).status_code == 201
            assert api.post("/api/v1/pools", json={"kind": "address", "name": "lan-pool",
                                                   "subnet": "10.72.0.0/28"}).status_code == 201
            assert api.post("/api/v1/networks", json={"name": "lan", "address_pool": "lan-pool",
                                                      "netns": netns}).status_code == 201
        sign_in(browser, base, "ops")
        browser.get(f"{base}/ui/#/vm/box")
        element(browser, "[data-vm-state=stopped]")
        element(browser, "details[data-hardware] summary").click()

        forget_api_calls(browser)
        fill_form_with(browser, "Add disk", {"size": "8M", "format": "raw"})
        click(browser, "details[data-hardware]", "Add disk")
        element(browser, "#notice", "has disk vdb (raw) from its next start")
        element(browser, 'tr[data-disk="vdb"]', "raw")
        element(browser, "main p.actions", "vdb (raw)")
        assert api_calls(browser) == ["/api/v1/vms/box/disks"]

        fill_form_with(browser, "Add NIC", {"model": "e1000", "mac": "52:54:00:12:34:56"})
        click(browser, "details[data-hardware]", "Add NIC")
        element(browser, 'tr[data-nic="52:54:00:12:34:56"]', "e1000")
        fill_form_with(browser, "Add NIC", {"mac": "52:54:00:12:34:56"})
        click(browser, "details[data-hardware]", "Add NIC")
        element(browser, "#notice.error", "already VM box's")
        screenshot(browser, "vm-hardware")

        forget_api_calls(browser)
        click(browser, 'tr[data-nic="52:54:00:12:34:56"]', "Remove")
        confirm(browser)
        until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, "tr[data-nic]"), "the NIC gone")
        vdb = element(browser, 'tr[data-disk="vdb"] td:nth-child(3)').text
        click(browser, 'tr[data-disk="vdb"]', "Remove")
        element(browser, "dialog#confirm[open] input[name=delete_file]").click()
        confirm(browser)
        until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, 'tr[data-disk="vdb"]'), "disk vdb gone")
        element(browser, "details[data-hardware][open]")
        assert api_calls(browser) == ["/api/v1/vms/box/nics/52%3A54%3A00%3A12%3A34%3A56",
                                      "/api/v1/vms/box/disks/vdb"]
        assert not Path(vdb).exists()
        # The boot disk offers no removal.
        assert not browser.find_elements(By.CSS_SELECTOR, 'tr[data-disk="vda"] button.danger')

        # A new VM with its NIC on the network: created, then given the NIC (the network reserves its address).
        element(browser, "header nav a", "VMs").click()
        create = form_with(browser, "Create VM")
        fill_form(create, {"name": "onlan", "disks": "8M", "nic": "network:lan"})
        create.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        element(browser, "[data-vm-state=stopped]")
        element(browser, "details[data-hardware] summary").click()
        element(browser, "tr[data-nic]", "tap")
