"""Reading exported disks into the backup being written: shared by every kind of backup
(local VMs, libvirt domains, VMs of ssh hosts), whatever export produced the points.

The backup is sealed while the export is open (every block and map durable) and published (its
manifest written) only once the export is closed: a backup whose export cannot be closed (the
VM's QEMU died, libvirt failed) fails with no manifest in the store, as its record says.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from dedup import BackupManifest, Store
from dedup.writer import BackupSession
from transports import NbdSource, ingest_disk
from transports.points import DiskPoint


def ingest_point(session: BackupSession, point: DiskPoint,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
    """Incremental where the point publishes a base bitmap, full otherwise; `progress(disk,
    bytes done, bytes to read)`."""
    writer = session.disk(point.disk, point.size)
    report = (lambda done, total: progress(point.disk, done, total)) if progress else None
    with NbdSource.of(point) as source:
        stats = ingest_disk(source, writer, incremental=point.since is not None, progress=report)
    writer.record_read(stats.bytes_read)


def seal_points(unpublished: ExitStack, store: Store, *, vm: str, backup_id: str, parent: BackupManifest | None,
                checkpoint: str | None, definition: dict[str, Any], notes: list[str], points: list[DiskPoint],
                progress: Callable[[str, int, int], None] | None) -> tuple[BackupSession, BackupManifest]:
    """Every point read into a new backup (incremental from `parent` if any point has a base),
    sealed: (its session, the manifest to publish once the export is closed). The session stays
    open in `unpublished`, which aborts it unless it is published first."""
    incremental = any(p.since for p in points)
    session = unpublished.enter_context(store.begin_backup(
        vm=vm, backup_id=backup_id, kind="incremental" if incremental else "full",
        parent=parent if incremental else None, checkpoint=checkpoint, vm_definition=definition))
    for note in dict.fromkeys([*notes, *(p.fallback_reason for p in points if p.fallback_reason)]):
        session.note(note)
    for point in points:
        ingest_point(session, point, progress)
    return session, session.seal()
