"""The table of backup and snapshot policies.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class PolicyRecord(Base):
    """A backup or snapshot policy; `spec` is policies.BackupPolicySpec / SnapshotPolicySpec as JSON."""
    __tablename__ = "policies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)        # backup | snapshot
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The scheduler's mark: runs due at or before it have been submitted (or deliberately skipped).
    scheduled_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
