"""The rules whose conditions the other tests do not make: each fires on its condition, once, and
resolves when it clears — HA given up, a failed boot test, a policy's missed backup, a host that
does not answer, a certificate near its end."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from notification_receivers import free_port

from appliance.backups.records import BackupRecord
from appliance.catalog.base import utcnow
from appliance.context import Appliance
from appliance.hosts.records import HostRecord
from appliance.notifications.notifier import Notifier
from appliance.notifications.service import RuleUpdate
from appliance.policies.records import PolicyRecord
from appliance.policies.service import BackupPolicy, PolicyService
from appliance.restores.records import BootTestRecord
from appliance.vms.records import VMOptionsRecord, VMRecord


def alarms_of(appliance: Appliance, rule: str) -> list[tuple[str, bool]]:
    """(key, firing) of the rule's alarms, oldest first."""
    return [(a["key"], a["firing"]) for a in reversed(appliance.notifications.alarms()) if a["rule"] == rule]


def checked(appliance: Appliance) -> Notifier:
    notifier = Notifier.for_appliance(appliance)
    notifier.check(utcnow())
    return notifier


def test_ha_gave_up_fires_until_ha_is_enabled_again(appliance: Appliance):
    with appliance.catalog.begin() as s:
        s.add(VMOptionsRecord(vm_name="flaky", ha_enabled=False, ha_gave_up_at=utcnow()))
    notifier = checked(appliance)
    notifier.check(utcnow())
    assert alarms_of(appliance, "ha.gave_up") == [("ha.gave_up:vm:flaky", True)]
    with appliance.catalog.begin() as s:
        opts = s.get(VMOptionsRecord, "flaky")
        opts.ha_enabled, opts.ha_gave_up_at = True, None   # what `cairn vm ha flaky --on` does
    notifier.check(utcnow())
    assert alarms_of(appliance, "ha.gave_up") == [("ha.gave_up:vm:flaky", False)]


def test_a_failed_boot_test_fires_until_a_later_one_passes(appliance: Appliance):
    def boot_test(passed: bool, at: datetime) -> None:
        with appliance.catalog.begin() as s:
            s.add(BootTestRecord(backup_id="b1", vm_name="web", started_at=at, seconds=3.0, passed=passed,
                                 reason="ok" if passed else "no readiness marker within 120 s", console=""))
    boot_test(False, utcnow() - timedelta(minutes=5))
    notifier = checked(appliance)
    assert alarms_of(appliance, "boottest.failed") == [("boottest.failed:vm:web", True)]
    boot_test(True, utcnow())
    notifier.check(utcnow())
    assert alarms_of(appliance, "boottest.failed") == [("boottest.failed:vm:web", False)]


def test_a_policys_run_that_left_no_backup_is_missed(appliance: Appliance):
    with appliance.catalog.begin() as s:
        s.add(VMRecord(name="db", spec={}))
    rec = PolicyService(appliance.catalog).create(BackupPolicy(name="hourly", schedule="0 * * * *", vms=["db"]))
    with appliance.catalog.begin() as s:   # made a day ago: runs were due since
        s.get(PolicyRecord, rec.id).created_at = utcnow() - timedelta(days=1)
    appliance.notifications.update_rule("backup.missed", RuleUpdate(params={"grace_minutes": 1}))
    # Half past the hour, so that both checks below see the same run, due on the hour: checked at
    # the real clock, a run at hh:59 would see the next hour's run come due between them.
    now = utcnow().replace(minute=30, second=0, microsecond=0)
    notifier = Notifier.for_appliance(appliance)
    notifier.check(now)
    assert alarms_of(appliance, "backup.missed") == [("backup.missed:hourly:vm:db", True)]
    with appliance.catalog.begin() as s:   # the backup came, after the run was due
        s.add(BackupRecord(id="late", vm_name="db", store="s", kind="full", status="ok", started_at=now,
                           finished_at=now, notes=[]))
    notifier.check(now + timedelta(minutes=2))
    assert alarms_of(appliance, "backup.missed") == [("backup.missed:hourly:vm:db", False)]


def test_a_host_that_does_not_answer(appliance: Appliance):
    with appliance.catalog.begin() as s:
        s.add(HostRecord(name="kvm9", kind="libvirt", uri=f"qemu+tcp://127.0.0.1:{free_port()}/system", options={}))
    checked(appliance)
    [(key, firing)] = alarms_of(appliance, "host.unreachable")
    assert key == "host.unreachable:kvm9" and firing
    assert "does not answer" in appliance.notifications.alarms()[0]["summary"]


def test_a_certificate_near_its_end_and_one_replaced(appliance: Appliance, tmp_path: Path):
    def certificate(days: int) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cairn")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
        path = tmp_path / "cert.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    path = certificate(days=5)
    appliance.notifications.update_rule("certificate.expiry", RuleUpdate(params={"certificate": str(path)}))
    notifier = checked(appliance)
    [alarm] = appliance.notifications.alarms()
    assert alarm["severity"] == "warning" and "expires in 4 day(s)" in alarm["summary"]
    certificate(days=400)
    notifier.check(utcnow() + timedelta(hours=2))   # checked hourly
    assert alarms_of(appliance, "certificate.expiry") == [(f"certificate.expiry:{path}", False)]
