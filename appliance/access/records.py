"""The tables of users, their VM access, sessions, API tokens and the audit log.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from appliance.catalog.base import Base, UTCDateTime, utcnow


class UserRecord(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))                   # admin | operator | viewer
    password_hash: Mapped[str] = mapped_column(Text)                 # passwords.hash_password()
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Sealed with the appliance's SecretBox; set at enrolment, in force once confirmed.
    totp_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last time step a code was accepted for: the same code cannot sign in twice.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The groups the user belongs to (names); a VM shared with one of them is visible (visibility.py).
    groups: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")


class LoginAttemptRecord(Base):
    """Sign-in attempts of one user name from one address in the current window (throttle.py)."""
    __tablename__ = "login_attempts"
    user_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)


class VMAccessRecord(Base):
    """Who may see a VM (appliance/access/visibility.py): its owner and the group it is shared with.
    No row, or no owner: shared with everyone. No foreign key: the row outlives the VM, like its
    backups, so the backups of a deleted VM stay as private as the VM was."""
    __tablename__ = "vm_access"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)   # a user name
    group: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class SessionRecord(Base):
    """A signed-in session; only the SHA-256 of its bearer token is kept."""
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AccessKeyRecord(Base):
    """An API token (AccessKey): a public id and a secret of which only the SHA-256 is kept."""
    __tablename__ = "access_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditRecord(Base):
    """One change asked of the appliance: who, what, when, and how it ended."""
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)      # a user name, or "anonymous"
    credential: Mapped[str | None] = mapped_column(String(40), nullable=True)   # "session" or an access key id
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    result: Mapped[str] = mapped_column(String(16), index=True)     # ok | denied | rejected | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
