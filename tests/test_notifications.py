"""Alarms reach a real webhook and a real SMTP server (STARTTLS, a password), each once while the
condition lasts, then "resolved"; signatures can be checked; a receiver that was down gets its
messages when it is back, also after Cairn restarted in between.

The conditions are real: a backup job of a stopped VM whose disk is gone, a chunk of the store
with a byte flipped (found by a verify job), and the store's filesystem over a threshold.
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_helpers import MiB, new_guest_vm
from notification_receivers import (
    SECRET,
    SMTP_PASSWORD,
    SMTP_USER,
    free_port,
    signature_ok,
    smtp_server,
    webhook,
)
from store_helpers import block_ids, block_pack, flip_byte

from appliance.context import Appliance
from appliance.notifications.notifier import Notifier
from appliance.notifications.outbox import Backoff
from appliance.notifications.quiet import QuietHours
from appliance.notifications.records import NotificationTargetRecord
from appliance.notifications.rules import Severity
from appliance.notifications.service import EmailTarget, RuleUpdate, WebhookTarget

JOB_TIMEOUT = 240
QUICK_RETRIES = Backoff(first_seconds=0.2, cap_seconds=1.0)
NEVER, ALWAYS = 100.0, 0.0001   # store.fill thresholds: no filesystem is fuller than 100 %


def tick_until(notifier: Notifier, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """The server's loop, ticked by hand until `done` (events are read once they are 2 s old)."""
    deadline = time.monotonic() + timeout
    while True:
        notifier.tick()
        if done():
            return
        assert time.monotonic() < deadline, "the notifier did not get there in time"
        time.sleep(0.3)


def store_fill(appliance: Appliance, threshold: float) -> None:
    appliance.notifications.update_rule("store.fill", RuleUpdate(params={"threshold_percent": threshold}))


def stopped_vm_with_data(appliance: Appliance, guest_kernel, name: str) -> Path:
    new_guest_vm(appliance, guest_kernel, name, [64 * MiB])
    disk = Path(appliance.vms.spec(name).disks[0].path)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5c 0 8M", str(disk)], check=True,
                   capture_output=True)
    return disk


def run_job(appliance: Appliance, kind: str, params: dict) -> str:
    return appliance.jobs.wait(appliance.jobs.submit(kind, params).id, JOB_TIMEOUT).state


def test_three_alarms_reach_a_webhook_and_a_mailbox_once_then_resolve(appliance: Appliance, guest_kernel,
                                                                      tmp_path: Path):
    disk = stopped_vm_with_data(appliance, guest_kernel, "nightly")
    store_fill(appliance, NEVER)   # this machine's disk may be fuller than the default 90 %
    notifier = Notifier.for_appliance(appliance, backoff=QUICK_RETRIES)
    with webhook() as hook, smtp_server(tmp_path / "smtp-tls") as mailbox:
        appliance.notifications.put_target(WebhookTarget(name="ops-hook", url=hook.url, secret=SECRET))
        appliance.notifications.put_target(EmailTarget(
            name="ops-mail", host="127.0.0.1", port=mailbox.port, ca_file=str(mailbox.ca_file),
            sender="cairn@example.org", recipients=["ops@example.org"], username=SMTP_USER, password=SMTP_PASSWORD))
        notifier.tick()   # notifications start here: the event log is read from now on

        def both_have(count: int) -> Callable[[], bool]:
            return lambda: len(hook.received) == count and len(mailbox.mails) == count

        # 1. A backup fails (the VM's disk is gone), then the next one works.
        disk.rename(disk.with_suffix(".away"))
        assert run_job(appliance, "backup", {"vm": "nightly"}) == "failed"
        tick_until(notifier, both_have(1))
        disk.with_suffix(".away").rename(disk)
        assert run_job(appliance, "backup", {"vm": "nightly"}) == "succeeded"
        tick_until(notifier, both_have(2))

        # 2. Verify finds a flipped byte in a block; the byte flipped back, the next verify finds none.
        store = appliance.store
        block = block_ids(store, store.get_backup(appliance.backups.list("nightly")[-1].id), "vda")[0]
        pack, offset = block_pack(store, block), store.blocks.locate(block)[1].offset + 10
        flip_byte(pack, offset=offset)
        assert run_job(appliance, "store.verify", {}) == "succeeded"
        tick_until(notifier, both_have(3))
        for _ in range(3):   # the damage lasts: no second message
            notifier.tick()
        assert len(hook.received) == 3
        flip_byte(pack, offset=offset)
        assert run_job(appliance, "store.verify", {}) == "succeeded"
        tick_until(notifier, both_have(4))

        # 3. The store's filesystem is over the threshold, then the threshold is raised above it.
        store_fill(appliance, ALWAYS)
        tick_until(notifier, both_have(5))
        notifier.tick()
        store_fill(appliance, NEVER)
        tick_until(notifier, both_have(6))
        time.sleep(0.5)
        notifier.tick()

    for rule in ("backup.failed", "verify.damage", "store.fill"):
        assert [m["event"] for m in hook.messages(rule)] == ["firing", "resolved"], rule
        mails = [m["Subject"] for m in mailbox.mails if f"rule: {rule}" in m.get_content()]
        assert [s.split("]")[0] for s in mails] == ["[Cairn FIRING", "[Cairn RESOLVED"], (rule, mails)
    assert len(hook.received) == len(mailbox.mails) == 6
    failed = hook.messages("backup.failed")[0]
    assert failed["resource"] == "vm:nightly" and "is missing" in failed["summary"] and failed["severity"] == "error"
    assert "damaged_backups" in hook.messages("verify.damage")[0]["alarm"]["details"]
    assert mailbox.logins, "the SMTP password was not used"

    # Every message is signed; a wrong secret or an altered body is detected.
    for message in hook.received:
        header = message["headers"]["X-Cairn-Signature"]
        assert signature_ok(SECRET, header, message["body"])
        assert not signature_ok("another secret of some length", header, message["body"])
        assert not signature_ok(SECRET, header, message["body"].replace(b"firing", b"resolved"))
    assert len({m["headers"]["X-Cairn-Delivery"] for m in hook.received}) == 6

    # The secrets are sealed at rest.
    with appliance.catalog() as s:
        for target in s.query(NotificationTargetRecord):
            assert target.sealed_secret and SECRET not in target.sealed_secret
            assert SMTP_PASSWORD not in target.sealed_secret and SMTP_PASSWORD not in json.dumps(target.config)


def test_a_receiver_that_was_down_gets_its_messages_after_cairn_restarted(appliance: Appliance,
                                                                         appliance_data_dir: Path):
    port = free_port()   # nothing listens there yet
    appliance.notifications.put_target(WebhookTarget(name="later", url=f"http://127.0.0.1:{port}/hook",
                                                     secret=SECRET))
    store_fill(appliance, NEVER)
    first = Notifier.for_appliance(appliance, backoff=QUICK_RETRIES)
    first.tick()
    store_fill(appliance, ALWAYS)
    first.tick()
    time.sleep(0.3)
    first.tick()
    [owed] = appliance.notifications.outbox()
    assert owed["state"] == "pending" and owed["attempts"] >= 2 and "refused" in owed["last_error"]
    store_fill(appliance, NEVER)
    first.tick()   # resolved: queued behind the firing one, not sent before it
    assert [m["state"] for m in appliance.notifications.outbox()] == ["pending", "pending"]

    # Cairn restarts: another process's appliance and notifier, on the same catalog.
    restarted = Appliance.open(str(appliance_data_dir))
    second = Notifier.for_appliance(restarted, backoff=QUICK_RETRIES)
    with webhook(port) as hook:
        tick_until(second, lambda: len(hook.received) == 2, timeout=15)
        second.tick()
    assert [m["event"] for m in hook.messages()] == ["firing", "resolved"]
    assert all(m["state"] == "delivered" for m in restarted.notifications.outbox())


def test_a_disabled_rule_sends_nothing_and_rule_targets_choose_receivers(appliance: Appliance):
    with webhook() as chosen, webhook() as other:
        appliance.notifications.put_target(WebhookTarget(name="chosen", url=chosen.url))
        appliance.notifications.put_target(WebhookTarget(name="other", url=other.url))
        store_fill(appliance, NEVER)
        notifier = Notifier.for_appliance(appliance, backoff=QUICK_RETRIES)
        notifier.tick()
        appliance.notifications.update_rule("store.fill", RuleUpdate(enabled=False,
                                                                     params={"threshold_percent": ALWAYS}))
        notifier.tick()
        assert not chosen.received and not other.received and not appliance.notifications.alarms()
        appliance.notifications.update_rule("store.fill", RuleUpdate(enabled=True, targets=["chosen"]))
        tick_until(notifier, lambda: len(chosen.received) == 1)
        assert not other.received
        assert "X-Cairn-Signature" not in chosen.received[0]["headers"]   # no secret: unsigned


def test_quiet_hours_hold_warnings_until_the_window_ends():
    from datetime import UTC, datetime
    hours = QuietHours.model_validate({"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"})
    late = datetime(2026, 12, 6, 22, 30, tzinfo=UTC)      # 23:30 in Berlin
    early = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)       # 06:00 in Berlin
    noon = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)
    morning = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)     # 07:00 in Berlin
    assert hours.release(late, Severity.WARNING) == morning
    assert hours.release(early, Severity.WARNING) == morning
    assert hours.release(noon, Severity.WARNING) == noon
    assert hours.release(late, Severity.ERROR) == late
    assert hours.model_copy(update={"hold_errors": True}).release(late, Severity.ERROR) == morning
    with pytest.raises(ValueError, match="unknown time zone"):
        QuietHours.model_validate({"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"})
