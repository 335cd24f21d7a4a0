"""The tables of snapshot trees and their crash-safe intent records.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class SnapshotTreeRecord(Base):
    """A VM's snapshot tree (chain.VMTree.to_dict()), one document, so each change is atomic."""
    __tablename__ = "snapshot_trees"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    tree: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class SnapshotIntentRecord(Base):
    """The snapshot operation under way on a VM (chain.Intent.to_dict()), written with the tree
    in one transaction; one left behind by a crash is finished or rolled back (chain/recover.py)."""
    __tablename__ = "snapshot_intents"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    intent: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
