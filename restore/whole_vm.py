"""Restore every disk of a backup plus the VM's definition into a directory, or into RBD
images, from the store alone (disaster recovery: no catalog, no appliance).

The directory receives <disk>.<format> for each disk and vm.json, the VM's
definition as it was backed up with its disk paths pointing at the restored
files. All or nothing: if one disk fails, the disks already restored are
removed again, and vm.json is written last. Into a Ceph pool, each disk becomes
the thin RBD image <prefix>-<disk> (prefix: the VM's name unless given), and the
definition, pointing at them, is returned instead of written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dedup import BackupManifest, Store
from dedup.fsutil import fsync_dir

from .destinations import RBD_SCHEME, FileDestination, NewDiskDestination, RbdDestination, RbdImage
from .errors import TargetDirectoryError, TargetExistsError
from .restorer import RestoreResult, restore_disk

DEFINITION_FILE = "vm.json"

# progress(disk, bytes done, disk size)
DiskProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class VMRestoreResult:
    backup_id: str
    vm: str
    disks: dict[str, str]  # disk name -> restored file
    definition: dict[str, Any]  # the VM definition, pointing at the restored files
    bytes_written: int
    seconds: float
    verified: bool


def restore_vm_to_directory(store: Store, backup_id: str, directory: str | os.PathLike[str], fmt: str = "qcow2",
                            force: bool = False, verify: bool = False,
                            progress: DiskProgress | None = None) -> VMRestoreResult:
    manifest = store.get_backup(backup_id)
    directory = Path(directory).absolute()
    if not directory.parent.is_dir():
        raise TargetDirectoryError(f"cannot restore into {directory}: {directory.parent} does not exist")
    directory.mkdir(exist_ok=True)
    targets = {disk.name: directory / f"{disk.name}.{fmt}" for disk in manifest.disks}
    definition_file = directory / DEFINITION_FILE
    existing = [p for p in [*targets.values(), definition_file] if p.exists()]
    if existing and not force:
        raise TargetExistsError(f"{', '.join(map(str, existing))} already exist; "
                                "restore with --force (the API's force) to replace them")
    results = restore_disks(store, manifest, {name: FileDestination(path, fmt, force) for name, path in targets.items()},
                            verify, progress)
    definition = definition_with_disks(manifest, {name: (str(path), fmt) for name, path in targets.items()})
    definition_file.write_text(json.dumps(definition, indent=2) + "\n")
    fsync_dir(directory)
    return VMRestoreResult(backup_id, manifest.vm, {n: str(p) for n, p in targets.items()}, definition,
                           sum(r.bytes_written for r in results), sum(r.seconds for r in results), verify)


def restore_vm_to_rbd(store: Store, backup_id: str, pool: str, prefix: str | None = None, force: bool = False,
                      verify: bool = False, progress: DiskProgress | None = None) -> VMRestoreResult:
    """Every disk into the image rbd:POOL[/NAMESPACE]/<prefix>-<disk> (pool: rbd:POOL[/NAMESPACE][?conf=...])."""
    manifest = store.get_backup(backup_id)
    body, _, query = pool.removeprefix(RBD_SCHEME).partition("?")
    images = {disk.name: RbdImage.parse(f"{RBD_SCHEME}{body}/{prefix or manifest.vm}-{disk.name}"
                                        + (f"?{query}" if query else "")) for disk in manifest.disks}
    results = restore_disks(store, manifest, {name: RbdDestination(image, force) for name, image in images.items()},
                            verify, progress)
    definition = definition_with_disks(manifest, {name: (image.qemu_filename, "raw") for name, image in images.items()})
    return VMRestoreResult(backup_id, manifest.vm, {n: str(i) for n, i in images.items()}, definition,
                           sum(r.bytes_written for r in results), sum(r.seconds for r in results), verify)


def restore_disks(store: Store, manifest: BackupManifest, destinations: Mapping[str, NewDiskDestination],
                  verify: bool, progress: DiskProgress | None) -> list[RestoreResult]:
    """Restore each named disk to its destination; on a failure remove the disks already restored."""
    done: list[NewDiskDestination] = []
    results = []
    try:
        for name, destination in destinations.items():
            report = (lambda d, t, name=name: progress(name, d, t)) if progress else None
            results.append(restore_disk(store, manifest.backup_id, name, destination, progress=report,
                                        verify=verify))
            done.append(destination)
    except BaseException:
        for destination in done:
            destination.remove()
        raise
    return results


def definition_with_disks(manifest: BackupManifest, disks: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """The backed-up VM definition with each disk's (path, format) replaced."""
    definition = json.loads(json.dumps(manifest.vm_definition))
    for disk in definition.get("disks", []):
        if disk.get("name") in disks:
            disk["path"], disk["format"] = disks[disk["name"]]
    return definition
