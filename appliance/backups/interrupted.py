"""What a backup whose process died leaves in its VM's QEMU, cleared before the VM's chains change.

QEMU keeps such a backup's export, its fleecing or push nodes and the checkpoint bitmap it
froze for as long as the VM runs: they are QEMU's state, not a process's, so no sweep of dead
processes ends them. The VM's next backup clears them before it freezes (transports/live.py);
a snapshot operation does the same, once the catalog says no backup of the VM runs, instead of
refusing to change the chains until that next backup.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from transports.live import reclaim_interrupted
from transports.qmp_protocol import QMP

from . import checkpoints
from .catalog import fail_interrupted
from .records import BackupRecord, BackupStatus, CheckpointState


async def clear_interrupted_backups(catalog: sessionmaker[Session], vm: str, disks: list[str], qmp: QMP) -> list[str]:
    """Unless a backup of VM `vm` runs: remove what interrupted ones left in its QEMU (`qmp`),
    their bitmaps folded back into each disk's base in the ledger, so the next backup stays
    incremental. Returns what was done (nothing while a backup runs: its export is its own)."""
    with catalog.begin() as s:
        fail_interrupted(s, vm)
        if s.scalars(select(BackupRecord.id).where(BackupRecord.vm_name == vm,
                                                   BackupRecord.status == BackupStatus.RUNNING)).first():
            return []
        ledger = checkpoints.current(s, vm)
        bases = {d: ledger[d].bitmap if d in ledger and ledger[d].state == CheckpointState.CURRENT else None
                 for d in disks}
    return await reclaim_interrupted(qmp, bases)
