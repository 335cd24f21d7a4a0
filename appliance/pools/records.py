"""The tables of pools, address leases and networks.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    ForeignKey,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class ComputePoolRecord(Base):
    """A named set of hosts (LOCAL_HOST or names in `hosts`) that placement may choose from."""
    __tablename__ = "compute_pools"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoragePoolRecord(Base):
    """Where VM disks can be created: a local directory, a mounted NFS export or a Ceph pool."""
    __tablename__ = "storage_pools"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))           # dir | nfs | rbd
    path: Mapped[str] = mapped_column(Text)                 # the folder; rbd:POOL[/NAMESPACE][:conf=..][:id=..]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AddressPoolRecord(Base):
    """IPv4 addresses first..last of a subnet, handed out one by one (gateway excluded)."""
    __tablename__ = "address_pools"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    subnet: Mapped[str] = mapped_column(String(18))          # 10.77.0.0/24
    gateway: Mapped[str] = mapped_column(String(15))
    first: Mapped[str] = mapped_column(String(15))
    last: Mapped[str] = mapped_column(String(15))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AddressLeaseRecord(Base):
    """One address handed out; the primary key is what makes a double allocation impossible."""
    __tablename__ = "address_leases"
    pool: Mapped[str] = mapped_column(String(63), ForeignKey("address_pools.name"), primary_key=True)
    address: Mapped[str] = mapped_column(String(15), primary_key=True)
    owner: Mapped[str] = mapped_column(String(127), index=True)   # a VM name for a VM's NIC
    nic: Mapped[str | None] = mapped_column(String(8), nullable=True)
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NetworkRecord(Base):
    """A VM network: a Linux bridge (in `netns`, or the host's namespace) + an address pool + dnsmasq."""
    __tablename__ = "networks"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    bridge: Mapped[str] = mapped_column(String(15), unique=True)
    address_pool: Mapped[str] = mapped_column(String(63), ForeignKey("address_pools.name"), unique=True)
    netns: Mapped[str | None] = mapped_column(String(63), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
