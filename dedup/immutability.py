"""Retention locks: backups that cannot be deleted or changed before a date ("immutable backups").

    backups/<vm>/<backup-id>/locked      {"until": "2027-01-01T00:00:00Z", "mode": "compliance",
                                          "locked_at": "2026-12-01T00:00:00Z"}

lock_backup() writes the record; a later call may move the date later, never earlier (as S3's
compliance mode: nobody, the store's admin included, shortens it). What holds the lock, by
where the store is:

- Cairn, on every backend: deleting a locked backup is refused (BackupLockedError); prune keeps
  it, outside the keep rules as a protected one, and says until when; GC keeps every pack that
  holds one of its blocks or map pages as it is (counted in its report), instead of repacking
  it: a repack would move those blocks into packs the lock does not cover (see below). So a GC
  never fails on a lock, it works around it. A lock is no protection against someone who does
  not go through Cairn.
- S3 with Object Lock (an s3:// store with lock=compliance, whose bucket Cairn created with it):
  the storage itself, against everyone. The backup's manifest and lock record, every pack it
  uses, config.json and key.json get a COMPLIANCE retention until the date: no client, the
  bucket's owner included, can delete or overwrite those object versions before it. A delete
  through another client adds a delete marker over a version (undone by deleting the marker).
- RADOS pools and directories: Cairn only. RADOS has no write-once objects: whoever holds a key
  with write caps on the pool (root on the host, for a directory) can delete the objects. For a
  copy nobody on the appliance can destroy, sync it to an S3 Object Lock bucket, or let a second
  site pull it with credentials the first never holds (sync.py); the lock record travels with it.

A lock whose date has passed holds nothing: prune applies its rules, GC reclaims the blocks,
S3 lets the versions go (the bucket's lifecycle rule removes them a day later).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from .backend import Backend
from .config import CONFIG_FILE
from .errors import BackupLockedError, LockDateError, ManifestCorruptError
from .manifest import MANIFEST_FILE, BackupManifest, format_time
from .packs import pack_file
from .references import References, mark_disk
from .store import KEY_FILE, BackupDir, Store

LOCK_FILE = "locked"
MODE = "compliance"


def lock_backup(store: Store, backup_id: str, until: datetime, now: datetime | None = None) -> datetime:
    """Lock the backup until `until` (or keep a later date it has); the date it is locked until."""
    now = now or datetime.now(UTC)
    if until.tzinfo is None:
        raise LockDateError(f"lock date {until.isoformat()} has no time zone")
    if until <= now:
        raise LockDateError(f"lock date {format_time(until)} is not in the future")
    manifest = store.get_backup(backup_id)
    held = locked_until(store, manifest)
    if held is not None and held > until:
        raise BackupLockedError(f"backup {backup_id} is locked until {format_time(held)}: a lock can be extended, "
                                "never shortened", backup_id, held)
    record = {"until": format_time(until), "mode": MODE, "locked_at": format_time(now)}
    store.write_sealed(_lock_file(manifest), json.dumps(record).encode() + b"\n")
    if _retention(store.backend) is not None:
        retain_in_storage(store, manifest, until, _referenced(store, manifest))
    return until


def locked_until(store: Store, manifest: BackupManifest) -> datetime | None:
    """The date the backup's lock record names (passed or not), None if it has none."""
    name = _lock_file(manifest)
    try:
        record = json.loads(store.read_sealed(name))
        return datetime.fromisoformat(record["until"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        # Unreadable is not unlocked: refusing to delete is the safe reading.
        raise ManifestCorruptError(f"lock record {name} cannot be read: {e}") from e


def locked_backups(store: Store, manifests: Iterable[BackupManifest],
                   now: datetime | None = None) -> dict[str, datetime]:
    """backup id -> lock date, for those of `manifests` locked now."""
    now = now or datetime.now(UTC)
    found = {m.backup_id: locked_until(store, m) for m in manifests}
    return {backup_id: until for backup_id, until in found.items() if until is not None and until > now}


def check_deletable(store: Store, manifest: BackupManifest, now: datetime | None = None) -> None:
    """BackupLockedError if the backup is locked now."""
    until = locked_backups(store, [manifest], now).get(manifest.backup_id)
    if until is not None:
        raise BackupLockedError(f"backup {manifest.backup_id} is locked until {format_time(until)}: it cannot be "
                                "deleted before then, by anyone", manifest.backup_id, until)


def pinned_packs(store: Store, now: datetime | None = None) -> set[str]:
    """The packs holding a block or map page of a backup locked now: GC leaves them as they are."""
    locked = [m for m in store.list_backups() if m.backup_id in locked_backups(store, [m], now)]
    index = store.blocks.ensure_loaded()
    packs = set()
    for manifest in locked:
        for block_id in _referenced(store, manifest):
            found = index.get(block_id)
            if found is not None:
                packs.add(found[0])
    return packs


def retain_in_storage(store: Store, manifest: BackupManifest, until: datetime, block_ids: Iterable[bytes]) -> None:
    """Have an Object Lock bucket hold what the backup needs until `until` (COMPLIANCE retention)."""
    backend = store.backend
    retain = _retention(backend)
    if retain is None:
        return
    directory = BackupDir(manifest.vm, manifest.backup_id)
    names = {directory.file(MANIFEST_FILE), _lock_file(manifest), CONFIG_FILE}
    if backend.stat(KEY_FILE) is not None:
        names.add(KEY_FILE)
    index = store.blocks.ensure_loaded()
    names |= {pack_file(found[0]) for block_id in block_ids if (found := index.get(block_id)) is not None}
    for name in sorted(names):
        retain(name, until)


def _referenced(store: Store, manifest: BackupManifest) -> set[bytes]:
    refs = References()
    for disk in manifest.disks:
        mark_disk(store.disk_map(manifest, disk), refs)
    return refs.pages | refs.blocks


def _retention(backend: Backend) -> Callable[[str, datetime], None] | None:
    """The backend's retain(name, until) if its storage holds objects itself (s3.py, Object Lock)."""
    return getattr(backend, "retain", None) if getattr(backend, "object_lock", False) else None


def _lock_file(manifest: BackupManifest) -> str:
    return BackupDir(manifest.vm, manifest.backup_id).file(LOCK_FILE)
