"""The tables of deletion rules and the recycle bin.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class DeletionRuleRecord(Base):
    """How deleting a kind of resource works: immediate, delayed (recycle bin) or never."""
    __tablename__ = "deletion_rules"
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    delay_seconds: Mapped[int] = mapped_column(BigInteger, default=0)


class RecycledRecord(Base):
    """A deleted resource kept for restoring until purge_at."""
    __tablename__ = "recycle_bin"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(160))
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    purge_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
