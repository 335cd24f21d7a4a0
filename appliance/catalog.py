"""The catalog: what the appliance knows about VMs and backups.

It is an index, not the truth about backup data: the store alone can restore. SQLite
in WAL mode by default so the CLI and the server can use it at once.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, String, Text, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class VMRecord(Base):
    __tablename__ = "vms"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BackupRecord(Base):
    __tablename__ = "backups"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key: backups outlive the VM they came from.
    vm_name: Mapped[str] = mapped_column(String(63), index=True)
    store: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)   # running | ok | failed | pruned
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(String(96), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The process running it, while status is running: one that died leaves an interrupted backup.
    runner_pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Set by `cairn store verify`: when the backup was last fully verified, and what
    # verify found wrong with it (empty: nothing).
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    damage: Mapped[list[str]] = mapped_column(JSON, default=list)


class SnapshotTreeRecord(Base):
    """A VM's snapshot tree (chain.VMTree.to_dict()), one document, so each change is atomic."""
    __tablename__ = "snapshot_trees"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    tree: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


def open_catalog(url: str) -> sessionmaker[Session]:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def last_good_backup(session: Session, vm: str) -> BackupRecord | None:
    return session.scalars(select(BackupRecord).where(BackupRecord.vm_name == vm, BackupRecord.status == "ok")
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
        rec.status = "pruned"


__all__ = ["VMRecord", "BackupRecord", "open_catalog", "last_good_backup", "record_verification", "record_pruned"]
