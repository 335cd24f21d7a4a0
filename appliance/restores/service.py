"""Restoring whole VMs inside the appliance: as a new VM, or over an existing one.

Over an existing VM the restore is all or nothing: every disk is restored
(and verified) into a new file next to the old ones while the old disks stay
untouched; only then, under the VM's lock and with the VM stopped, does one
catalog transaction point the VM at the new files. Until that commit the VM
still opens its old disks, whatever fails or dies in between.

A restore killed before that commit leaves nothing for long: the partial file of the disk it
was writing, and the disks it had finished, are removed by the next start's sweep (procs/):
each finished disk is recorded there until the swap takes it.

The restored disks become the root of a new snapshot tree: the same
transaction replaces the old tree and records, as an intent, every other
file of the VM's folders (old disks, snapshot layers, memory states) to be
removed, which is done right after; a crash in between is finished by the
VM's next snapshot operation or `cairn snapshot check`. The checkpoint ledger
marks the VM's checkpoints replaced in that transaction too: the restored
disks have no bitmaps, so the next backup reads them in full and says why.
Nothing of this starts while another VM (an instant clone) reads one of the
files it would remove.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from appliance.backups import checkpoints
from appliance.catalog.base import utcnow
from appliance.errors import ConflictError
from appliance.names import check_vm_name
from appliance.settings import Settings
from appliance.snapshots.records import SnapshotTreeRecord
from appliance.snapshots.service import CatalogJournal
from appliance.vms.service import VMService
from chain import Intent, VMTree
from chain.ops import finish_recorded
from dedup import Store
from procs import Holding
from restore import FileDestination, RbdImage
from restore.destinations import NewDiskDestination, RbdDestination
from restore.whole_vm import DiskProgress, restore_disks
from vmm import DiskSpec, VMSpec
from vmm.network_disks import RbdDisk, network_disk
from vmm.rundir import exclusive

from .boot_test import BootTestService
from .instant import InstantRestoreService
from .restored_vm import define_like

RESTORED_FORMAT = "qcow2"


@dataclass(frozen=True)
class VMRestore:
    vm: str
    backup_id: str
    disks: dict[str, str]  # disk name -> the file the VM now opens
    bytes_written: int
    seconds: float
    verified: bool


def _destination(disk: DiskSpec) -> NewDiskDestination:
    """Where a new VM's disk is restored: its file, or its RBD image (rebuilt under a partial name
    and swapped for the blank one create() made)."""
    if isinstance(image := network_disk(disk.path), RbdDisk):
        return RbdDestination(RbdImage(image.pool, image.namespace, image.image, image.conf, image.user), force=True)
    return FileDestination(Path(disk.path), disk.format, force=True)


class RestoreService:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], vms: VMService, store: Store):
        self.settings = settings
        self.catalog = catalog
        self.vms = vms
        self.store = store
        self.journal = CatalogJournal(catalog, vms)
        self.instant = InstantRestoreService(settings, vms, store)
        self.boot_tests = BootTestService(settings.scratch_dir, settings.data_dir / "boot-tests", catalog, vms.driver,
                                          store)

    def as_new_vm(self, backup_id: str, name: str, verify: bool = True,
                  progress: DiskProgress | None = None, storage_pool: str | None = None) -> VMRestore:
        """A new VM `name` with the backed-up VM's definition and disks (in `storage_pool` if given)."""
        check_vm_name(name)
        manifest = self.store.get_backup(backup_id)
        backed_up, spec = define_like(self.vms, name, manifest, storage_pool)
        # create() names disks vda, vdb, ... in order; the backup's disks go in the same order.
        sources = {old.name: new for old, new in zip(backed_up.disks, spec.disks, strict=True)}
        try:
            results = restore_disks(self.store, manifest,
                                    {old: _destination(new) for old, new in sources.items()}, verify, progress)
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
        if remote := [d.name for d in spec.disks if network_disk(d.path) is not None]:
            # The swap of new files for old ones beside them, all or nothing, needs a folder.
            raise ConflictError(f"VM {vm} has network disks ({', '.join(remote)}): restore the backup as a new VM "
                                "(into its storage pool) or restore each disk into an image of your choice")
        backup_disks = sorted(d.name for d in manifest.disks)
        if backup_disks != sorted(d.name for d in spec.disks):
            raise ConflictError(f"backup {backup_id} has disks {', '.join(backup_disks)}, VM {vm} has "
                                f"{', '.join(d.name for d in spec.disks)}: restore it as a new VM instead")
        self.vms.require_unread(self._replaced_files(spec), f"restoring over VM {vm}", besides=vm)
        await self._ensure_stopped(vm, stop)
        self._remove_unswapped(spec)
        suffix = secrets.token_hex(4)
        # Beside each disk's active layer: in the VM's own folder, wherever that lives.
        new_files = {d.name: Path(d.path).parent / f"{d.name}-restored-{suffix}.{RESTORED_FORMAT}"
                     for d in spec.disks}
        unswapped = Holding(f"restore of backup {backup_id} over VM {vm}")
        try:
            results = await asyncio.to_thread(
                restore_disks, self.store, manifest,
                {name: UnswappedDisk(path, unswapped) for name, path in new_files.items()}, verify, progress)
            self._swap(vm, backup_id, {name: str(path) for name, path in new_files.items()}, unswapped)
        except BaseException:
            # Those the VM does not open: a swap that failed after its commit (removing the old
            # files) leaves the new ones in use.
            in_use = {d.path for d in self.vms.spec(vm).disks}
            for path in new_files.values():
                if str(path) not in in_use:
                    path.unlink(missing_ok=True)
            raise
        finally:
            unswapped.close()
        return VMRestore(vm, backup_id, {n: str(p) for n, p in new_files.items()},
                         sum(r.bytes_written for r in results), sum(r.seconds for r in results), verify)

    def _replaced_files(self, spec: VMSpec) -> list[Path]:
        """What a restore over the VM replaces: every file in its own folders (disks, snapshot
        layers, memory states); a library image its disks are based on is elsewhere and stays."""
        return self.vms.own_files(spec)

    def _remove_unswapped(self, spec: VMSpec) -> None:
        """What an earlier restore over this VM left when it died before its swap: partial files
        and complete restored disks the VM never used."""
        with self.catalog() as s:
            in_use = {Path(f).resolve() for f in self._files_in_use(s, spec.name)}
        for folder in self.vms.folders(spec):
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
                raise ConflictError(f"VM {vm} is {state}; stop it first, or restore with --stop (the API's stop)")
            await self.vms.stop(vm)

    def _swap(self, vm: str, backup_id: str, new_files: dict[str, str], unswapped: Holding) -> None:
        """Under the VM's lock, in one transaction: the VM's disks are the new files, its snapshot
        tree a new root on them, its checkpoints marked replaced, and the intent to remove every
        other file of its folders (chain/intent.py, "restore"). Then those files are removed; a
        crash before that is finished by the VM's next snapshot operation or check.

        The sweep's record of the new files (`unswapped`) goes inside that transaction, before
        its commit: a crash between the two leaves the files to the next restore over the VM
        (_remove_unswapped), never has the sweep remove disks the VM opens."""
        rundir = self.vms.driver.paths(vm)
        rundir.path.mkdir(parents=True, exist_ok=True)
        with exclusive(rundir, vm):
            state = self.vms.show(vm).status.state
            if state in ("running", "paused"):
                raise ConflictError(f"VM {vm} was started during the restore; its disks were left as they were")
            new = {str(Path(f).resolve()) for f in new_files.values()}
            replaced = [str(f) for f in self._replaced_files(self.vms.spec(vm)) if str(f.resolve()) not in new]
            # Again, under the lock: another VM may have been based on these files meanwhile.
            self.vms.require_unread(replaced, f"restoring over VM {vm}", besides=vm)
            tree = VMTree.new(vm, new_files, utcnow())
            intent = Intent("restore", backup_id, phase="recorded", obsolete=sorted(replaced))

            def swapped(session: Session) -> None:
                checkpoints.replaced(session, vm)
                unswapped.close()
            self.journal.record(tree, intent, also=swapped)
            finish_recorded(tree, self.journal, intent)


class UnswappedDisk(FileDestination):
    """A disk restored beside the VM's own, recorded for the sweep once complete (`unswapped`,
    closed when the VM takes it): the partial file is the destination's own record's, the
    complete one this record's, so a restore killed at any point leaves neither."""

    def __init__(self, path: Path, unswapped: Holding) -> None:
        super().__init__(path, RESTORED_FORMAT, force=False)
        self.unswapped = unswapped

    def commit(self) -> None:
        super().commit()
        self.unswapped.remove(self.path.absolute())
