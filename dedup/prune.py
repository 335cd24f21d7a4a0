"""Retention: which backups of a VM to keep, and removing the others.

The rules, applied to one VM's backups sorted newest first: by `created`, or by the order an
appliance's catalog knows them in (`among`, for an appliance: the backups it made, in the order
it began them, whatever its clock said; another appliance's backups of a VM of the same name in
a shared store are none of its business):

- keep-last N keeps the N newest backups.
- keep-hourly/daily/weekly/monthly/yearly N each keep the newest backup of
  each of the N most recent periods (hour, day, ISO week, month, year, in
  UTC) that hold a backup. Periods without backups do not count.
- Rules are independent, as in restic: a backup kept by one rule also counts
  for every other rule whose period it is the newest of.
- A backup no rule keeps is removed. Giving no rule at all is an error
  rather than "remove everything".
- A protected backup (a `protected` file in its directory, so the mark
  lives in the store itself) is always kept and invisible to the rules: it
  neither uses up a count nor makes a period taken. So is a backup under a
  retention lock until its date (immutability.py); delete_backup refuses it.

Removing a backup deletes its manifest first, which makes the backup cease
to exist in one atomic step, then its directory; a crash in between leaves a
directory without manifest that GC removes. Its chunks go at the next GC.
Removing the parent of an incremental is safe: every index lists all chunks
of its disk, so no backup needs another backup's index to restore.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from .backend import write_file
from .errors import RetentionRuleError
from .immutability import check_deletable, locked_backups
from .manifest import MANIFEST_FILE, BackupManifest, format_time
from .store import BackupDir, Store

PROTECTED_FILE = "protected"

_PERIODS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: f"{t:%Y-%m-%dT%H}",
    "daily": lambda t: f"{t:%Y-%m-%d}",
    "weekly": lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: f"{t:%Y-%m}",
    "yearly": lambda t: f"{t:%Y}",
}


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    def __post_init__(self) -> None:
        counts = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, count in counts.items():
            if not isinstance(count, int) or count < 0:
                raise RetentionRuleError(f"{name.replace('_', '-')} must be a whole number >= 0, got {count!r}")
        if not any(counts.values()):
            raise RetentionRuleError("no keep rule given: refusing to remove every backup")


@dataclass(frozen=True)
class PruneDecision:
    backup_id: str
    created: datetime
    keep: bool
    reasons: tuple[str, ...]  # e.g. "keep-last 1", "keep-daily 2026-11-21", "protected"


@dataclass(frozen=True)
class PruneReport:
    vm: str
    dry_run: bool
    decisions: tuple[PruneDecision, ...]  # newest first

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(d.backup_id for d in self.decisions if not d.keep)


def plan_retention(
    backups: list[BackupManifest], policy: RetentionPolicy, protected: set[str],
    order: Mapping[str, int] | None = None,
) -> tuple[PruneDecision, ...]:
    """Decide for each backup, newest first, whether to keep it and why. `order`: backup id ->
    rank, higher is newer (default: by `created`)."""
    newest_first = sorted(backups, key=lambda m: (order[m.backup_id] if order is not None else 0, m.created,
                                                  m.backup_id), reverse=True)
    reasons: dict[str, list[str]] = {m.backup_id: [] for m in newest_first}
    ruled = [m for m in newest_first if m.backup_id not in protected]
    for rank, m in enumerate(ruled[: policy.keep_last], 1):
        reasons[m.backup_id].append(f"keep-last {rank}")
    for period, bucket_of in _PERIODS.items():
        wanted = getattr(policy, f"keep_{period}")
        taken: set[str] = set()
        for m in ruled:
            if len(taken) == wanted:
                break
            bucket = bucket_of(m.created.astimezone(UTC))
            if bucket not in taken:
                taken.add(bucket)
                reasons[m.backup_id].append(f"keep-{period} {bucket}")
    return tuple(
        PruneDecision(
            m.backup_id,
            m.created,
            keep=m.backup_id in protected or bool(reasons[m.backup_id]),
            reasons=("protected",) if m.backup_id in protected else tuple(reasons[m.backup_id]),
        )
        for m in newest_first
    )


def prune(store: Store, vm: str, policy: RetentionPolicy, dry_run: bool = False,
          among: Mapping[str, int] | None = None) -> PruneReport:
    """`among`: rule on these backups only (id -> rank, higher is newer); the VM's others stay
    as they are. Default: every backup of the VM, by `created`."""
    backups = [m for m in store.list_backups(vm) if among is None or m.backup_id in among]
    protected = {m.backup_id for m in backups if is_protected(store, m)}
    locked = locked_backups(store, backups)
    decisions = plan_retention(backups, policy, protected | locked.keys(), among)
    decisions = tuple(replace(d, reasons=(f"locked until {format_time(locked[d.backup_id])}",))
                      if d.backup_id in locked.keys() - protected else d for d in decisions)
    if not dry_run:
        by_id = {m.backup_id: m for m in backups}
        decisions = tuple(
            d if d.keep or delete_backup(store, by_id[d.backup_id]) else replace(d, keep=True, reasons=("protected",))
            for d in decisions
        )
    return PruneReport(vm, dry_run, decisions)


def delete_backup(store: Store, manifest: BackupManifest) -> bool:
    """Make the backup cease to exist (manifest first), then remove its files.

    Returns False, removing nothing, if the backup is protected: checked here
    again so that a protect() racing with a prune always wins. BackupLockedError
    if it is under a retention lock.
    """
    directory = BackupDir(manifest.vm, manifest.backup_id)
    if is_protected(store, manifest):
        return False
    check_deletable(store, manifest)
    store.backend.remove(directory.file(MANIFEST_FILE))
    store.backend.remove_tree(directory.name)
    return True


def is_protected(store: Store, manifest: BackupManifest) -> bool:
    return store.backend.stat(BackupDir(manifest.vm, manifest.backup_id).file(PROTECTED_FILE)) is not None


def protect(store: Store, backup_id: str) -> BackupManifest:
    manifest = store.get_backup(backup_id)
    write_file(store.backend, BackupDir(manifest.vm, backup_id).file(PROTECTED_FILE), b"")
    return manifest


def unprotect(store: Store, backup_id: str) -> BackupManifest:
    manifest = store.get_backup(backup_id)
    store.backend.remove(BackupDir(manifest.vm, backup_id).file(PROTECTED_FILE))
    return manifest
