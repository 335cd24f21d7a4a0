"""The tables of backups: one row per backup, and the checkpoint ledger.
"""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    Text,
    false,
    func,
    select,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, Session, mapped_column

from appliance.catalog.base import Base, StrEnumType, UTCDateTime, utcnow
from appliance.errors import ConflictError


class BackupStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"       # kept as a record of what went wrong (a job that fails leaves none)
    PRUNED = "pruned"       # removed by retention; never a parent again
    RECYCLED = "recycled"   # waiting in the recycle bin (appliance/deletion)


class CheckpointState(StrEnum):
    CURRENT = "current"     # the base the disk's next incremental may read from
    # The disk was restored over: its bitmap went with the old file; the row tells the next backup why.
    REPLACED = "replaced"
    RETIRED = "retired"


def next_sequence(context: DefaultExecutionContext) -> int:
    """One more than any backup's so far, as a backup is recorded."""
    return int(context.connection.scalar(select(func.coalesce(func.max(BackupRecord.sequence), 0)))) + 1


class BackupRecord(Base):
    __tablename__ = "backups"
    # A VM's backups in time order: its listing, its newest (and whether one is newer: `latest`).
    __table_args__ = (Index("ix_backups_vm_name_started_at", "vm_name", "started_at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key: backups outlive the VM they came from.
    vm_name: Mapped[str] = mapped_column(String(63))
    store: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[BackupStatus] = mapped_column(StrEnumType(BackupStatus), index=True)
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(String(96), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # The order the backups were begun in, whatever the clock said then (it may have been set
    # back meanwhile): what "newest" means to retention.
    sequence: Mapped[int] = mapped_column(BigInteger, default=next_sequence)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The process running it, while status is running: one that died leaves an interrupted backup.
    # Its pid and when it started (appliance/process.py): a pid alone may be another process's by now.
    runner_pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    runner_start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set by `cairn store verify`: when the backup was last fully verified, and what
    # verify found wrong with it (empty: nothing).
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    damage: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Never pruned: the store's `protected` file says so, and is the truth (prune and delete read
    # it); this is what the catalog last saw of it, for lists (protection.py keeps them in step).
    protected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    @property
    def new_checkpoint(self) -> str:
        """The checkpoint the backup makes as it runs, named when it began (the column is empty
        only in rows older than checkpoints, which never run again)."""
        if self.checkpoint is None:
            raise ConflictError(f"backup {self.id} names no checkpoint to make")
        return self.checkpoint


class CheckpointRecord(Base):
    """The checkpoint ledger: which dirty bitmap, on which image (and node), belongs to which
    backup. A disk's `current` row is the base its next incremental may read from, once QEMU
    (or qemu-img) confirms the bitmap is still there and trustworthy; `retired` rows are history."""
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_name: Mapped[str] = mapped_column(String(63), index=True)
    disk: Mapped[str] = mapped_column(String(63))
    bitmap: Mapped[str] = mapped_column(String(96))
    backup_id: Mapped[str] = mapped_column(String(64), index=True)
    image_file: Mapped[str] = mapped_column(Text)
    node: Mapped[str | None] = mapped_column(String(63), nullable=True)   # None: made by qemu-img, VM stopped
    # Incremental reads of this disk since its last full read, this checkpoint's backup included.
    incrementals: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[CheckpointState] = mapped_column(StrEnumType(CheckpointState), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def last_good_backup(session: Session, vm: str) -> BackupRecord | None:
    return session.scalars(select(BackupRecord).where(BackupRecord.vm_name == vm, BackupRecord.status == BackupStatus.OK)
                           .order_by(BackupRecord.started_at.desc())).first()


def record_verification(session: Session, damage: dict[str, list[str]], verified: list[str] | None) -> None:
    """Mark damaged backups; `verified` (a full verify's backup ids) also clears the damage of the others."""
    ids = set(damage) | set(verified or ())
    for rec in session.scalars(select(BackupRecord).where(BackupRecord.id.in_(ids))):
        if verified is not None:
            rec.verified_at = utcnow()
            rec.damage = damage.get(rec.id, [])
        elif rec.id in damage:
            rec.damage = damage[rec.id]


def record_pruned(session: Session, backup_ids: list[str]) -> None:
    """Pruned backups stop being "ok", so none is chosen as a parent again."""
    for rec in session.scalars(select(BackupRecord).where(BackupRecord.id.in_(backup_ids))):
        rec.status = BackupStatus.PRUNED
