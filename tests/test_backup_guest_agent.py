"""Guest-agent freeze: a real qemu-ga in the test guest freezes its filesystem around the
instant of the backup, and thaws it even when the backup fails there."""
from __future__ import annotations

import asyncio
import base64
import subprocess
from pathlib import Path

import pytest
from backup_helpers import MiB, boot_guest_vm, run
from guest.harness import BOOT_TIMEOUT

from appliance.context import Appliance
from restore import restore_disk
from transports.fleece import FleeceExport
from transports.guest_agent import GuestAgent

AGENT_GUEST = "cairn.agent=on cairn.fs=vdb"


async def guest_shell(socket: Path, script: str) -> str:
    """Run `script` in the guest through the agent's guest-exec and return its output."""
    async with GuestAgent(socket) as agent:
        pid = (await agent.execute("guest-exec", {"path": "/bin/sh", "arg": ["-c", script],
                                                  "capture-output": True}))["pid"]
        for _ in range(int(BOOT_TIMEOUT * 10)):
            status = await agent.execute("guest-exec-status", {"pid": pid})
            if status["exited"]:
                assert status.get("exitcode") == 0, status
                return base64.b64decode(status.get("out-data", "")).decode()
            await asyncio.sleep(0.1)
    raise AssertionError(f"guest-exec of {script!r} did not finish")


async def freeze_status(socket: Path) -> str:
    async with GuestAgent(socket) as agent:
        return await agent.execute("guest-fsfreeze-status")


def freeze_events(appliance: Appliance, vm: str) -> list[str]:
    log = (appliance.settings.run_dir / vm / "serial.log").read_text(errors="replace")
    return [line.split()[2] for line in log.splitlines() if line.startswith("CAIRN: FSFREEZE")]


def test_the_guest_filesystem_is_frozen_for_the_backup_and_thawed_after(appliance: Appliance, guest_kernel,
                                                                        tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "fs", [128 * MiB, 32 * MiB], append=AGENT_GUEST)
    socket = appliance.driver.paths("fs").guest_agent_socket
    try:
        # Written but not synced: it sits in the guest's page cache until the freeze flushes it.
        run(guest_shell(socket, "echo cairn-was-here > /mnt/hello"))
        manifest = run(appliance.backups.create(appliance.vms.spec("fs"))).manifest

        assert "guest agent froze 1 filesystem(s) for the instant of the backup" in manifest.notes, manifest.notes
        assert freeze_events(appliance, "fs") == ["freeze", "thaw"]
        assert run(freeze_status(socket)) == "thawed"
        restored = tmp_path / "vdb.raw"
        restore_disk(appliance.store, manifest.backup_id, "vdb", restored)
        cat = subprocess.run(["debugfs", "-R", "cat /hello", str(restored)], capture_output=True, text=True,
                             check=True)
        assert cat.stdout == "cairn-was-here\n", cat
        assert run(guest_shell(socket, "echo still-writable > /mnt/after && cat /mnt/after")) == "still-writable\n"
    finally:
        run(appliance.vms.stop("fs", timeout=5, force=True))


def test_a_backup_that_fails_inside_the_freeze_still_thaws_the_guest(appliance: Appliance, guest_kernel,
                                                                     monkeypatch: pytest.MonkeyPatch):
    boot_guest_vm(appliance, guest_kernel, "fail", [128 * MiB, 32 * MiB], append=AGENT_GUEST)
    socket = appliance.driver.paths("fail").guest_agent_socket
    real_actions = FleeceExport._freeze_actions

    def with_a_bad_action(self: FleeceExport) -> list[dict]:
        # QEMU refuses the whole transaction, while the guest is frozen.
        return [*real_actions(self), {"type": "block-dirty-bitmap-add", "data": {"node": "no-such-node", "name": "x"}}]

    try:
        monkeypatch.setattr(FleeceExport, "_freeze_actions", with_a_bad_action)
        with pytest.raises(Exception, match="no-such-node"):
            run(appliance.backups.create(appliance.vms.spec("fail")))
        assert freeze_events(appliance, "fail") == ["freeze", "thaw"]
        assert run(freeze_status(socket)) == "thawed"
        assert [b.status for b in appliance.backups.list("fail")] == ["failed"]

        monkeypatch.undo()
        again = run(appliance.backups.create(appliance.vms.spec("fail"))).manifest
        assert again.kind == "full" and freeze_events(appliance, "fail") == ["freeze", "thaw"] * 2
    finally:
        run(appliance.vms.stop("fail", timeout=5, force=True))
