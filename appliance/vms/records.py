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
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow
from vmm.placement import LOCAL_HOST


class VMRecord(Base):
    __tablename__ = "vms"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Where the VM runs, or last ran: "local" (this machine) or a registered ssh host. Written
    # before its QEMU starts there, so it never points away from a running QEMU.
    host: Mapped[str] = mapped_column(String(63), default=LOCAL_HOST, server_default=LOCAL_HOST)
    # Cairn started it and nothing has stopped it since (Cairn, or its guest, seen by HA): if
    # its host goes silent, HA restarts it elsewhere; one that was meant to be down stays down.
    should_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


# HA's flapping limit as a person sets it: up to 1000 restarts, within up to 30 days (both well
# inside the catalog's 32-bit integers, which refuse what lies beyond).
HA_MAX_RESTARTS = 1000
HA_MAX_WINDOW_SECONDS = 30 * 86400


class VMOptionsRecord(Base):
    """How the appliance manages a VM beyond its definition: HA, instant-clone links, placement."""
    __tablename__ = "vm_options"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    ha_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Flapping limit: at most ha_max_restarts restarts within ha_window_seconds, then give up.
    ha_max_restarts: Mapped[int] = mapped_column(Integer, default=3)
    ha_window_seconds: Mapped[int] = mapped_column(Integer, default=600)
    ha_gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # An instant clone reads from this VM's disks until its background stream completes.
    linked_to: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    # Placement chooses among this compute pool's hosts (hosts that see the VM's disks at the
    # same paths: shared storage); without one the VM runs on this machine.
    compute_pool: Mapped[str | None] = mapped_column(String(63), nullable=True)


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
