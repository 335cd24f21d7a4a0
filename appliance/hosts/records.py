"""The table of registered hosts.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class HostRecord(Base):
    """A host whose VMs the appliance manages or backs up besides its own (appliance/hosts/service.py)."""
    __tablename__ = "hosts"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))          # libvirt | ssh
    uri: Mapped[str] = mapped_column(Text)                 # libvirt: the connection URI; ssh: ssh://user@host:port
    # ssh: key_file, known_hosts (paths on the appliance), agent_dir (on the host)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
