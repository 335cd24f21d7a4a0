"""Boot-testing backups: the real test guest passes; a disk that boots through the BIOS passes
while its boot sector is intact and fails, with the reason and at once, once it is damaged."""
from __future__ import annotations

import subprocess
from pathlib import Path

from backup_helpers import CHUNK, MiB, boot_guest_vm, run
from restore_helpers import boot_sector


def leftovers(appliance) -> list[Path]:
    return [*appliance.settings.scratch_dir.glob("boottest-*"), *appliance.settings.run_dir.glob("boottest-*")]


def test_boot_test_of_the_test_guest_passes(appliance, guest_kernel):
    boot_guest_vm(appliance, guest_kernel, "src", [128 * MiB])
    backup_id = run(appliance.backups.create(appliance.vms.spec("src"))).manifest.backup_id
    run(appliance.vms.stop("src", force=True))
    disk = appliance.vms.spec("src").disks[0].path
    before = Path(disk).stat().st_mtime_ns
    result = run(appliance.restores.boot_tests.run(backup_id, timeout=180))
    assert result.passed, result.reason + result.console
    assert "CAIRN: READY" in result.console
    # Its screen at the end, a PNG kept by the test's id (what the console shows beside the console text).
    assert result.has_screen
    assert appliance.restores.boot_tests.screen_path(result.id).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert Path(disk).stat().st_mtime_ns == before
    assert [(r.passed, r.reason) for r in appliance.restores.boot_tests.history(backup_id)] == [
        (True, result.reason)]
    assert leftovers(appliance) == []


def test_damaged_boot_sector_fails_with_the_reason(appliance, tmp_path):
    spec = appliance.vms.create("bios", [2 * CHUNK])
    disk = spec.disks[0].path
    raw = tmp_path / "disk.raw"
    raw.write_bytes(boot_sector())
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), disk], check=True)
    good = run(appliance.backups.create(spec)).manifest.backup_id
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -z 0 512", disk], check=True, capture_output=True)
    damaged = run(appliance.backups.create(spec)).manifest.backup_id

    passed = run(appliance.restores.boot_tests.run(good, timeout=120))
    assert passed.passed, passed.reason + passed.console
    failed = run(appliance.restores.boot_tests.run(damaged, timeout=20))
    assert not failed.passed
    assert "no boot signature" in failed.reason and failed.seconds < 20, "said at once, not after the timeout"
    assert [r.passed for r in appliance.restores.boot_tests.history(damaged)] == [False]
    assert leftovers(appliance) == []
