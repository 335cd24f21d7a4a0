"""The catalog: what the appliance knows about VMs and backups.

It is an index, not the truth about backup data: the store alone can restore. SQLite
in WAL mode by default so the CLI and the server can use it at once.
"""
from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .errors import CatalogError


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    # Its pid and when it started (appliance/process.py): a pid alone may be another process's by now.
    runner_pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    runner_start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set by `cairn store verify`: when the backup was last fully verified, and what
    # verify found wrong with it (empty: nothing).
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    damage: Mapped[list[str]] = mapped_column(JSON, default=list)


class CheckpointRecord(Base):
    """The checkpoint ledger: which dirty bitmap, on which image (and node), belongs to which
    backup. A disk's `current` row is the base its next incremental may read from, once QEMU
    (or qemu-img) confirms the bitmap is still there and trustworthy; `retired` rows are history."""
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vm_name: Mapped[str] = mapped_column(String(63), index=True)
    disk: Mapped[str] = mapped_column(String(63))
    bitmap: Mapped[str] = mapped_column(String(96))
    backup_id: Mapped[str] = mapped_column(String(64), index=True)
    image_file: Mapped[str] = mapped_column(Text)
    node: Mapped[str | None] = mapped_column(String(63), nullable=True)   # None: made by qemu-img, VM stopped
    # Incremental reads of this disk since its last full read, this checkpoint's backup included.
    incrementals: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), index=True)   # current | retired
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SnapshotTreeRecord(Base):
    """A VM's snapshot tree (chain.VMTree.to_dict()), one document, so each change is atomic."""
    __tablename__ = "snapshot_trees"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    tree: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class SnapshotIntentRecord(Base):
    """The snapshot operation under way on a VM (chain.Intent.to_dict()), written with the tree
    in one transaction; one left behind by a crash is finished or rolled back (chain/recover.py)."""
    __tablename__ = "snapshot_intents"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    intent: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


# -- VM management (appliance/vms.py) ---------------------------------------------------------

class VMOptionsRecord(Base):
    """How the appliance manages a VM beyond its definition: HA and instant-clone links."""
    __tablename__ = "vm_options"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    ha_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Flapping limit: at most ha_max_restarts restarts within ha_window_seconds, then give up.
    ha_max_restarts: Mapped[int] = mapped_column(Integer, default=3)
    ha_window_seconds: Mapped[int] = mapped_column(Integer, default=600)
    ha_gave_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
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


class HostRecord(Base):
    """A host whose VMs the appliance manages or backs up besides its own (appliance/hosts.py)."""
    __tablename__ = "hosts"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))          # libvirt | ssh
    uri: Mapped[str] = mapped_column(Text)                 # libvirt: the connection URI; ssh: ssh://user@host:port
    # ssh: key_file, known_hosts (paths on the appliance), agent_dir (on the host)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that comes back timezone-aware in UTC on every database (SQLite drops the zone)."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# -- jobs, events, policies, deletion protection (appliance/jobs.py and neighbours) ---------------

class JobRecord(Base):
    """One job: its steps run in order, each undone in reverse if a later one fails."""
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    # Jobs on one resource ("vm:web1", "store") run one at a time, in submission order.
    resource: Mapped[str] = mapped_column(String(160), index=True)
    # queued | running | undoing | succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Capacity the job needs while it runs: {"host:local": 2, "store:/srv/store": 1} (limit per key).
    limits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    # [{"name", "state": pending|running|done|undone|undo_failed, "error"}]
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # What the steps learnt (a backup id, a snapshot id): their undo needs it, also after a restart.
    memo: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    policy_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    # The process running it, and when that process started (appliance/process.py).
    runner_pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    runner_start: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class EventRecord(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)        # job.started, backup.done, verify.damage...
    severity: Mapped[str] = mapped_column(String(16), index=True)    # info | warning | error
    resource: Mapped[str | None] = mapped_column(String(160), nullable=True, index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


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


class VMTagRecord(Base):
    __tablename__ = "vm_tags"
    vm_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    tag: Mapped[str] = mapped_column(String(63), primary_key=True, index=True)


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


# -- users, sessions, access keys, audit (appliance/auth.py, users.py, audit.py) ----------------

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
    """Who may see a VM (appliance/visibility.py): its owner and the group it is shared with.
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


# -- pools and networks (appliance/pools.py, appliance/networks.py) ----------------------------

class ComputePoolRecord(Base):
    """A named set of hosts (LOCAL_HOST or names in `hosts`) that placement may choose from."""
    __tablename__ = "compute_pools"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoragePoolRecord(Base):
    """A folder VM disks can be created in: a local directory or a mounted NFS export."""
    __tablename__ = "storage_pools"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))           # dir | nfs
    path: Mapped[str] = mapped_column(Text)
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


def catalog_engine(url: str) -> Engine:
    """An engine for a catalog URL; `postgresql://` means the psycopg (3) driver, the one installed."""
    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() == "postgresql")
    except (ArgumentError, ImportError) as e:
        raise CatalogError(f"the catalog URL {url!r} is not usable: {e}") from e
    if engine.dialect.name == "sqlite":
        _private_sqlite_files(parsed.database)
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _private_sqlite_files(database: str | None) -> None:
    """The catalog holds password hashes: its file is 0600 before SQLite opens it (SQLite gives
    its -wal and -shm files the database file's mode), and an older, looser one is tightened."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    for path in (database, f"{database}-wal", f"{database}-shm"):
        if path == database or os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)


def open_catalog(url: str) -> sessionmaker[Session]:
    """The catalog at `url`, its schema upgraded to the newest migration first."""
    from .migrate import upgrade  # the migrations import this module's models

    engine = catalog_engine(url)
    try:
        upgrade(engine)
    except OperationalError as e:
        raise unreachable(engine, e) from e
    return sessionmaker(engine, expire_on_commit=False)


def unreachable(engine: Engine, e: OperationalError) -> CatalogError:
    # Say where, never with the password, and why (e.orig: the driver's own words).
    return CatalogError(f"cannot open the catalog at {engine.url.render_as_string(hide_password=True)}: "
                        f"{str(e.orig).strip()}")


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


__all__ = ["BackupRecord", "CheckpointRecord", "VMRecord", "last_good_backup", "open_catalog", "record_pruned", "record_verification"]
