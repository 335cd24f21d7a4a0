"""The tables of VM management: definitions, options (HA, clone links), scheduling groups, tags.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class VMRecord(Base):
    __tablename__ = "vms"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VMOptionsRecord(Base):
    """How the appliance manages a VM beyond its definition: HA and instant-clone links."""
    __tablename__ = "vm_options"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    ha_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Flapping limit: at most ha_max_restarts restarts within ha_window_seconds, then give up.
    ha_max_restarts: Mapped[int] = mapped_column(Integer, default=3)
    ha_window_seconds: Mapped[int] = mapped_column(Integer, default=600)
    ha_gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # An instant clone reads from this VM's disks until its background stream completes.
    linked_to: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)


class SchedulingGroupRecord(Base):
    """A VM scheduling group and its placement policy (vmm.placement.SchedulingGroup)."""
    __tablename__ = "scheduling_groups"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    policy: Mapped[str] = mapped_column(String(32))            # vm-affinity, vm-host-anti-affinity...
    enforcement: Mapped[str] = mapped_column(String(16))       # mandatory | preferred
    vms: Mapped[list[str]] = mapped_column(JSON, default=list)
    hosts: Mapped[list[str]] = mapped_column(JSON, default=list)


class VMTagRecord(Base):
    __tablename__ = "vm_tags"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    tag: Mapped[str] = mapped_column(String(63), primary_key=True, index=True)
