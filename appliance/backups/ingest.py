"""Reading one exported disk into the backup being written: shared by every kind of backup
(local VMs, libvirt domains, VMs of ssh hosts), whatever export produced the point."""
from __future__ import annotations

from collections.abc import Callable

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
