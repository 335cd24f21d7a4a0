"""Protecting a backup in the console (headless Chromium against `cairn serve`): Protect marks the row
"protected" from the API's answer alone (one round trip, no list asked for again), Unprotect lifts it
the same way, a prune keeps the protected backup and deleting it is refused until it is unprotected."""
from __future__ import annotations

from pathlib import Path

from job_helpers import job_result
from web_helpers import (
    add_user,
    api_calls,
    api_client_of,
    chromium,
    click,
    confirm,
    console_server,
    element,
    forget_api_calls,
    screenshot,
    sign_in,
)

from appliance.access.roles import Role
from appliance.context import Appliance
from dedup import Store, is_protected


def test_protect_in_the_console_marks_the_row_from_the_answer(appliance_data_dir: Path):
    Store.init(appliance_data_dir / "store")
    add_user(appliance_data_dir, "ops", Role.OPERATOR)
    add_user(appliance_data_dir, "root", Role.ADMIN)
    Appliance.open(str(appliance_data_dir)).vms.create("web", [8 << 20])
    with console_server(appliance_data_dir) as base, chromium() as browser, \
            api_client_of(base, appliance_data_dir, "root") as admin:
        old, new = (job_result(admin, admin.post("/api/v1/vms/web/backups", json={"full": True}))["backup_id"]
                    for _ in range(2))
        sign_in(browser, base, "ops")
        browser.get(f"{base}/ui/#/vm/web")
        row = f'tr[data-backup="{old}"]'
        element(browser, f'{row}[data-protected="false"]')
        forget_api_calls(browser)
        click(browser, row, "Protect")
        assert "protected" in element(browser, f'{row}[data-protected="true"] .badge').text
        assert "no prune removes it" in element(browser, "#notice").text
        assert api_calls(browser) == [f"/api/v1/backups/{old}/protection"], "one round trip"
        screenshot(browser, "backup-protected")
        store = Store.open(appliance_data_dir / "store")
        assert is_protected(store, store.get_backup(old))

        forget_api_calls(browser)
        click(browser, row, "Unprotect")
        element(browser, f'{row}[data-protected="false"]')
        assert not browser.find_elements("css selector", f"{row} .badge")
        assert api_calls(browser) == [f"/api/v1/backups/{old}/protection"]
        assert not is_protected(store, store.get_backup(old))

        # Protected again, a prune keeping one backup keeps it too; the page, redrawn by the prune's
        # job events from the list, still marks it.
        click(browser, row, "Protect")
        element(browser, f'{row}[data-protected="true"]')
        report = job_result(admin, admin.post("/api/v1/store/prune", json={"vm": "web", "keep_last": 1}))
        assert not report["removed"] and {m.backup_id for m in store.list_backups("web")} == {old, new}
        element(browser, f'{row}[data-protected="true"] .badge')

        # Deleting it is refused while it is protected, in the API's words; unprotected, it goes to the
        # recycle bin, its row marked so from the answer; restored from there in one round trip too.
        click(browser, row, "Delete")
        element(browser, "#notice", "unprotect it first")
        click(browser, row, "Unprotect")
        element(browser, f'{row}[data-protected="false"]')
        forget_api_calls(browser)
        click(browser, row, "Delete")
        assert any("recycle bin" in t for t in confirm(browser))
        element(browser, f"{row} .status-recycled")
        assert api_calls(browser) == [f"/api/v1/backups/{old}"] * 2, "the dry run, then the deletion"
        element(browser, "#sign-out").click()   # the recycle bin is the admin's
        sign_in(browser, base, "root")
        browser.get(f"{base}/ui/#/recycle-bin")
        element(browser, f'tr[data-recycled="{old}"]')
        forget_api_calls(browser)
        click(browser, f'tr[data-recycled="{old}"]', "Restore")
        element(browser, "main td", "the recycle bin is empty")
        assert api_calls(browser)[0].endswith("/restore") and len(api_calls(browser)) == 1
