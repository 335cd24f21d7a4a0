"""Restoring whole VMs inside the appliance: as a new VM, or over an existing one.

Over an existing VM the restore is all or nothing: every disk is restored
(and verified) into a new file next to the old ones while the old disks stay
untouched; only then, under the VM's lock and with the VM stopped, does one
catalog transaction point the VM at the new files. Until that commit the VM
still opens its old disks, whatever fails or dies in between. The old files
and the snapshot tree that described them go afterwards: the restored disks
have no snapshots, and no checkpoint bitmaps, so the next backup reads in full.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from chain import VMTree
from dedup import Store
from restore import FileDestination
from restore.whole_vm import DiskProgress, restore_disks
from vmm.rundir import exclusive

from .boot_test import BootTestService
from .catalog import SnapshotTreeRecord
from .errors import ConflictError
from .instant_restore import InstantRestoreService
from .names import check_vm_name
from .restored_vm import define_like
from .settings import Settings
from .vms import VMService

RESTORED_FORMAT = "qcow2"


@dataclass(frozen=True)
class VMRestore:
    vm: str
    backup_id: str
    disks: dict[str, str]  # disk name -> the file the VM now opens
    bytes_written: int
    seconds: float
    verified: bool


class RestoreService:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], vms: VMService, store: Store):
        self.settings = settings
        self.catalog = catalog
        self.vms = vms
        self.store = store
        self.instant = InstantRestoreService(settings, vms, store)
        self.boot_tests = BootTestService(settings.scratch_dir, catalog, vms.driver, store)

    def as_new_vm(self, backup_id: str, name: str, verify: bool = True,
                  progress: DiskProgress | None = None) -> VMRestore:
        """A new VM `name` with the backed-up VM's definition and disks."""
        check_vm_name(name)
        manifest = self.store.get_backup(backup_id)
        backed_up, spec = define_like(self.vms, name, manifest)
        # create() names disks vda, vdb, ... in order; the backup's disks go in the same order.
        sources = {old.name: new for old, new in zip(backed_up.disks, spec.disks, strict=True)}
        try:
            results = restore_disks(self.store, manifest,
                                    {old: FileDestination(Path(new.path), new.format, force=True)
                                     for old, new in sources.items()},
                                    verify, progress)
        except BaseException:
            self.vms.delete(name)
            raise
        return VMRestore(name, backup_id, {new.name: new.path for new in spec.disks},
                         sum(r.bytes_written for r in results), sum(r.seconds for r in results), verify)

    async def over_vm(self, backup_id: str, vm: str, stop: bool = False, verify: bool = True,
                      progress: DiskProgress | None = None) -> VMRestore:
        """Replace the disks of VM `vm` with those of the backup, all or nothing.

        A running VM is refused unless stop=True, which shuts it down first."""
        manifest = self.store.get_backup(backup_id)
        spec = self.vms.spec(vm)
        backup_disks = sorted(d.name for d in manifest.disks)
        if backup_disks != sorted(d.name for d in spec.disks):
            raise ConflictError(f"backup {backup_id} has disks {', '.join(backup_disks)}, VM {vm} has "
                                f"{', '.join(d.name for d in spec.disks)}: restore it as a new VM instead")
        await self._ensure_stopped(vm, stop)
        folder = self.settings.images_dir / vm
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_unswapped(vm, folder)
        suffix = secrets.token_hex(4)
        new_files = {d.name: folder / f"{d.name}-restored-{suffix}.{RESTORED_FORMAT}" for d in manifest.disks}
        results = await asyncio.to_thread(
            restore_disks, self.store, manifest,
            {name: FileDestination(path, RESTORED_FORMAT, force=False) for name, path in new_files.items()},
            verify, progress)
        try:
            old_files = self._swap(vm, {name: str(path) for name, path in new_files.items()})
        except BaseException:
            for path in new_files.values():
                path.unlink(missing_ok=True)
            raise
        for old in old_files - {str(p) for p in new_files.values()}:
            Path(old).unlink(missing_ok=True)
        return VMRestore(vm, backup_id, {n: str(p) for n, p in new_files.items()},
                         sum(r.bytes_written for r in results), sum(r.seconds for r in results), verify)

    def _remove_unswapped(self, vm: str, folder: Path) -> None:
        """What an earlier restore over this VM left when it died before its swap: partial files
        and complete restored disks the VM never used."""
        with self.catalog() as s:
            in_use = {Path(f).resolve() for f in self._files_in_use(s, vm)}
        for leftover in [*folder.glob(".*.cairn-partial"), *folder.glob(f"*-restored-*.{RESTORED_FORMAT}")]:
            if leftover.resolve() not in in_use:
                leftover.unlink()

    def _files_in_use(self, session: Session, vm: str) -> set[str]:
        """The VM's disks and every layer of its snapshot tree."""
        files = {d.path for d in self.vms.spec(vm).disks}
        if tree := session.get(SnapshotTreeRecord, vm):
            files |= {node.file for node in VMTree.from_dict(tree.tree).nodes.values()}
        return files

    async def _ensure_stopped(self, vm: str, stop: bool) -> None:
        state = self.vms.show(vm).status.state
        if state in ("running", "paused"):
            if not stop:
                raise ConflictError(f"VM {vm} is {state}; stop it first (or ask the restore to stop it)")
            await self.vms.stop(vm)

    def _swap(self, vm: str, new_files: dict[str, str]) -> set[str]:
        """Point the VM at the new files in one transaction; return the files it no longer uses
        (old disks and snapshot layers inside the VM's own folder; a base image elsewhere stays)."""
        rundir = self.vms.driver.paths(vm)
        rundir.path.mkdir(parents=True, exist_ok=True)
        with exclusive(rundir, vm):
            state = self.vms.show(vm).status.state
            if state in ("running", "paused"):
                raise ConflictError(f"VM {vm} was started during the restore; its disks were left as they were")
            with self.catalog.begin() as s:
                old = self._files_in_use(s, vm)
                if tree := s.get(SnapshotTreeRecord, vm):
                    s.delete(tree)
                self.vms.point_disks(s, vm, new_files)
        folder = (self.settings.images_dir / vm).resolve()
        return {f for f in old if Path(f).resolve().parent == folder}
