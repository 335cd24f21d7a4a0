"""Boot-testing a backup: does a VM booted from it come up?

The backup's disks are served read-only from the store (nbdkit) and the test VM
runs on throw-away qcow2 overlays on them, with the backed-up hardware but no
network card and no ISO, under a name of its own, so it touches neither the
original VM nor the store. It passes when the readiness marker appears on its
serial console within the timeout; otherwise it fails with the reason and the
end of the console. Its screen (a display with no network access: VNC on a unix
socket in its run directory) is captured as a PNG at the end, kept beside the
catalog's record (screens_dir/<id>.png) for an admin to look at. Overlays,
exports and the VM's run directory are removed afterwards; the result is
recorded in the catalog (boot_tests).
"""
from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import nbd
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow
from dedup import Store
from restore.export import BackupExport
from restore.targets import create_qcow2
from vmm import DiskSpec, QemuDriver, VMSpec
from vmm.errors import QMPError

from .records import BootTestRecord
from .restored_vm import backed_up_spec

DEFAULT_MARKER = "CAIRN: READY"
CONSOLE_TAIL = 4000
BOOT_SIGNATURE = b"\x55\xaa"


@dataclass(frozen=True)
class BootTestResult:
    id: int
    backup_id: str
    vm: str
    passed: bool
    reason: str
    seconds: float
    console: str
    has_screen: bool


class BootTestService:
    def __init__(self, scratch_dir: Path, screens_dir: Path, catalog: sessionmaker[Session], driver: QemuDriver,
                 store: Store):
        self.scratch_dir = scratch_dir
        self.screens_dir = screens_dir
        self.catalog = catalog
        self.driver = driver
        self.store = store

    async def run(self, backup_id: str, timeout: float = 120.0, marker: str = DEFAULT_MARKER) -> BootTestResult:
        manifest = self.store.get_backup(backup_id)
        backed_up = backed_up_spec(manifest)
        name = f"boottest-{secrets.token_hex(4)}"
        folder = self.scratch_dir / name
        folder.mkdir(parents=True)
        exports: list[BackupExport] = []
        started = time.monotonic()
        try:
            disks = []
            for disk in backed_up.disks:
                export = BackupExport.start(self.store.location, backup_id, disk.name, folder / f"{disk.name}.sock")
                exports.append(export)
                overlay = folder / f"{disk.name}.qcow2"
                create_qcow2(overlay, manifest.disk(disk.name).size, backing_uri=export.uri)
                disks.append(DiskSpec(disk.name, str(overlay)))
            isolated = replace(backed_up, name=name, disks=disks, nics=[], cdrom=None, boot=[], vnc=True)
            # Firmware boots the first disk (no kernel given): one whose first sector cannot boot
            # fails now, not after the whole timeout.
            unbootable = _boot_sector_problem(disks[0].name, exports[0]) if exports and isolated.kernel is None else ""
            if unbootable:
                passed, reason = False, f"not booted{unbootable}"
            else:
                passed, reason = await self._boot(isolated, marker, timeout)
            console = self._console(name)
            screen = await self._capture_screen(name, folder / "screen.png")
        finally:
            await self.driver.stop(name, force=True)
            self.driver.forget(name)
            for export in exports:
                export.stop()
            shutil.rmtree(folder, ignore_errors=True)
        seconds = time.monotonic() - started
        with self.catalog.begin() as s:
            record = BootTestRecord(backup_id=backup_id, vm_name=manifest.vm, seconds=seconds,
                                    passed=passed, reason=reason, console=console, started_at=utcnow())
            s.add(record)
            s.flush()
            test_id = record.id
        if screen is not None:
            self.screens_dir.mkdir(parents=True, exist_ok=True)
            self.screen_path(test_id).write_bytes(screen)
        return BootTestResult(test_id, backup_id, manifest.vm, passed, reason, seconds, console, screen is not None)

    def screen_path(self, test_id: int) -> Path:
        return self.screens_dir / f"{test_id}.png"

    async def _capture_screen(self, name: str, path: Path) -> bytes | None:
        """The VM's screen as a PNG, or None if it is no longer running (it stopped by itself)."""
        if self.driver.status(name).state not in ("running", "paused"):
            return None
        try:
            async with self.driver.session(name) as qmp:
                await qmp.execute("screendump", {"filename": str(path), "format": "png"})
        except QMPError:
            return None   # it stopped meanwhile: the console text is what there is
        return path.read_bytes()

    def history(self, backup_id: str) -> list[BootTestRecord]:
        with self.catalog() as s:
            return list(s.scalars(select(BootTestRecord).where(BootTestRecord.backup_id == backup_id)
                                  .order_by(BootTestRecord.id)))

    async def _boot(self, spec: VMSpec, marker: str, timeout: float) -> tuple[bool, str]:
        await self.driver.start(spec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self._console(spec.name, tail=None):
                return True, f"{marker!r} appeared on the serial console"
            if self.driver.status(spec.name).state not in ("running", "paused"):
                return False, f"the VM stopped before {marker!r} appeared on the serial console"
            await asyncio.sleep(0.2)
        return False, f"no {marker!r} on the serial console within {timeout:g}s"

    def _console(self, name: str, tail: int | None = CONSOLE_TAIL) -> str:
        try:
            text = self.driver.paths(name).serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if tail is None else text[-tail:]


def _boot_sector_problem(disk: str, export: BackupExport) -> str:
    """Why the firmware would find nothing to boot on the disk, if its first sector says so, as
    "; why" ("": it has a boot signature)."""
    handle = nbd.NBD()
    try:
        handle.connect_uri(export.uri)
        sector = handle.pread(512, 0)
    except nbd.Error as e:
        return f"; the first sector of disk {disk} cannot be read from the backup: {e}"
    finally:
        handle.shutdown()
    if sector[510:512] != BOOT_SIGNATURE:
        return (f"; disk {disk} has no boot signature (55 AA) in its first sector: "
                "its boot sector is damaged or missing")
    return ""
