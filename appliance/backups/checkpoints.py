"""The checkpoint ledger: from which bitmap each disk's next incremental may read.

Before a backup, the ledger proposes a base per disk; the export then checks it against QEMU
(or qemu-img) and reads the disk in full if it is not trustworthy. After a good backup the
bitmaps it made become the current ones. Every reason for a full read ends up in the backup's
notes.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.catalog.base import utcnow
from dedup import BackupManifest
from transports.points import Checkpoint, DiskPoint

from .records import CheckpointRecord, CheckpointState


@dataclass
class Bases:
    """Per disk, the ledger's checkpoint (the export repairs and checks it) and, for the disks
    that must be read in full whatever QEMU says, why."""

    known: dict[str, Checkpoint | None]
    full: dict[str, str | None] = field(default_factory=dict)   # None: no reason to note (a full backup)

    @property
    def notes(self) -> list[str]:
        return [reason for reason in self.full.values() if reason]


# A disk's row is current until the next good backup retires it; replaced once the disk was
# restored over: its bitmap went with the old file, the row is left to tell the next backup why.
LIVE_STATES = (CheckpointState.CURRENT, CheckpointState.REPLACED)


def current(session: Session, vm: str) -> dict[str, CheckpointRecord]:
    rows = session.scalars(select(CheckpointRecord).where(CheckpointRecord.vm_name == vm,
                                                          CheckpointRecord.state.in_(LIVE_STATES)))
    return {r.disk: r for r in rows}


def replaced(session: Session, vm: str) -> None:
    """The VM's disks were restored over (new files, no bitmaps): their next backup reads them
    in full, and says why."""
    for row in session.scalars(select(CheckpointRecord).where(CheckpointRecord.vm_name == vm,
                                                              CheckpointRecord.state == CheckpointState.CURRENT)):
        row.state = CheckpointState.REPLACED


def plan_bases(disks: Iterable[str], parent: BackupManifest | None, ledger: dict[str, CheckpointRecord],
               full_every: int) -> Bases:
    """An incremental reuses the parent's chunk ids, so its bitmap must be the one made at the
    parent's instant: any other would leave writes unseen or attribute them to the wrong point."""
    usable = {d: row for d, row in ledger.items() if row.state == CheckpointState.CURRENT}
    bases = Bases({d: Checkpoint(usable[d].bitmap, usable[d].image_file) if d in usable else None for d in disks})
    parent_disks = {d.name for d in parent.disks} if parent else set()
    for disk in bases.known:
        entry = ledger.get(disk)
        if parent is None:
            bases.full[disk] = None
        elif disk not in parent_disks:
            bases.full[disk] = f"{disk}: new disk since backup {parent.backup_id}; full read"
        elif entry is None:
            bases.full[disk] = f"{disk}: the ledger has no checkpoint for it; full read"
        elif entry.state == CheckpointState.REPLACED:
            bases.full[disk] = (f"{disk}: restored over since backup {entry.backup_id} (its checkpoint {entry.bitmap} "
                                "went with the old file); full read")
        elif entry.backup_id != parent.backup_id:
            bases.full[disk] = (f"{disk}: its checkpoint {entry.bitmap} belongs to backup {entry.backup_id}, "
                                f"not to the parent {parent.backup_id}; full read")
        elif entry.incrementals >= full_every:
            bases.full[disk] = (f"{disk}: {entry.incrementals} incrementals since its last full read; "
                                f"full re-read (every {full_every})")
    return bases


def record(session: Session, vm: str, backup_id: str, points: list[DiskPoint],
           ledger: dict[str, CheckpointRecord]) -> None:
    """After a good backup: its bitmaps are the bases now, the previous ones are gone."""
    for row in session.scalars(select(CheckpointRecord).where(CheckpointRecord.vm_name == vm,
                                                              CheckpointRecord.state.in_(LIVE_STATES))):
        row.state, row.retired_at = CheckpointState.RETIRED, utcnow()
    for point in points:
        if point.checkpoint is None:
            continue
        base = ledger.get(point.disk)
        depth = base.incrementals + 1 if point.since and base else 0
        session.add(CheckpointRecord(vm_name=vm, disk=point.disk, bitmap=point.checkpoint, backup_id=backup_id,
                                     image_file=point.checkpoint_file or "", node=point.checkpoint_node,
                                     incrementals=depth, state=CheckpointState.CURRENT))
