"""The table of boot-test results.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class BootTestRecord(Base):
    """One boot test of a backup: did a VM booted from it signal readiness, and if not, why."""
    __tablename__ = "boot_tests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No foreign key: a boot test also runs on backups found in the store alone.
    backup_id: Mapped[str] = mapped_column(String(64), index=True)
    vm_name: Mapped[str] = mapped_column(String(63))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seconds: Mapped[float] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    console: Mapped[str] = mapped_column(Text)  # the end of the serial console
