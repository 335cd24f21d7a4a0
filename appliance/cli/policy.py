"""`cairn policy ...`: backup, snapshot and sync policies, which `cairn serve` runs on their schedule."""
from __future__ import annotations

from typing import Any

import typer

from appliance.backups.options import DEFAULT_FULL_EVERY
from appliance.backups.retention import RetentionRules
from appliance.policies.service import AnyPolicy, BackupPolicy, PolicyBase, SnapshotPolicy, SyncPolicy
from appliance.units import parse_size

from .common import EXCLUDE_OPT, INCLUDE_OPT, JsonOpt, emit_json, out, print_table, reports_errors, state, table

policy_app = typer.Typer(help="Backup and snapshot policies (run by `cairn serve`).", no_args_is_help=True)
VM_OPT = typer.Option([], "--vm", help="VM name pattern, e.g. 'web*' (repeat for more).")
TAG_OPT = typer.Option([], "--tag", help="VM tag; VMs with any of them are selected (repeat for more).")
KEEP_OPTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@policy_app.command("create")
@reports_errors
def policy_create(name: str,
                  schedule: str = typer.Option(..., help="Cron expression in UTC, e.g. '0 2 * * *'."),
                  vm: list[str] = VM_OPT, tag: list[str] = TAG_OPT,
                  snapshot: bool = typer.Option(False, "--snapshot", help="Take automatic snapshots, not backups."),
                  keep: int = typer.Option(7, help="Snapshot policy: automatic snapshots kept per VM."),
                  full_every: int = typer.Option(DEFAULT_FULL_EVERY, help="Backup policy: read a disk in full after this "
                                                 "many incrementals of it (0: always)."),
                  keep_last: int = typer.Option(0), keep_hourly: int = typer.Option(0),
                  keep_daily: int = typer.Option(0), keep_weekly: int = typer.Option(0),
                  keep_monthly: int = typer.Option(0), keep_yearly: int = typer.Option(0),
                  max_per_host: int | None = typer.Option(None, help="Backups running at once on this host."),
                  max_per_store: int | None = typer.Option(None, help="Backups running at once into the store."),
                  include: list[str] = INCLUDE_OPT, exclude: list[str] = EXCLUDE_OPT,
                  skip_missed: bool = typer.Option(False, "--skip-missed", help="After downtime, skip missed runs."),
                  sync_to: str | None = typer.Option(None, "--sync-to", help="A sync policy: copy the VMs' backups "
                                                     "into this store (directory or URL)."),
                  sync_from: str | None = typer.Option(None, "--sync-from", help="A sync policy: copy them from this "
                                                       "store into this appliance's."),
                  bandwidth: str | None = typer.Option(None, help="Sync policy: bytes per second at most, e.g. 10M."),
                  as_json: bool = JsonOpt) -> None:
    """Create a policy. Backup retention: the --keep-* rules (none: keep every backup)."""
    common: dict[str, Any] = {"name": name, "schedule": schedule, "vms": vm, "tags": tag,
                              "run_missed": not skip_missed}
    rules = {"keep_last": keep_last, "keep_hourly": keep_hourly, "keep_daily": keep_daily,
             "keep_weekly": keep_weekly, "keep_monthly": keep_monthly, "keep_yearly": keep_yearly}
    policy: AnyPolicy
    if sync_to or sync_from:
        policy = SyncPolicy(**common, target=sync_to, source=sync_from,
                            bandwidth=parse_size(bandwidth) if bandwidth else None)
    elif snapshot:
        policy = SnapshotPolicy(**common, keep=keep)
    else:
        policy = BackupPolicy(**common, full_every=full_every, max_per_host=max_per_host,
                              max_per_store=max_per_store, include=include, exclude=exclude,
                              retention=RetentionRules(**rules) if any(rules.values()) else None)
    made = state.client.create_policy(policy)
    emit_json(made) if as_json else out.print(f"created policy {name} ({made.id})", highlight=False)


@policy_app.command("list")
@reports_errors
def policy_list(as_json: bool = JsonOpt) -> None:
    """Every policy with its schedule and selection."""
    policies = state.client.policies()
    if as_json:
        emit_json(policies)
        return
    listing = table("name", "kind", "enabled", "schedule", "scheduled until", "vms", "tags", wide=("vms", "tags"))
    for p in policies:
        # A store upkeep policy (verify, gc) selects no VMs.
        vms, tags = (p.policy.vms, p.policy.tags) if isinstance(p.policy, PolicyBase) else ([], [])
        listing.add_row(p.policy.name, p.policy.kind, "yes" if p.policy.enabled else "no", p.policy.schedule,
                        f"{p.scheduled_until:%Y-%m-%d %H:%M}" if p.scheduled_until else "",
                        ", ".join(vms), ", ".join(tags))
    print_table(listing)


@policy_app.command("preview")
@reports_errors
def policy_preview(name: str, count: int = typer.Option(5, min=1, max=100), as_json: bool = JsonOpt) -> None:
    """The next runs and what each selected VM would get."""
    preview = state.client.preview_policy(name, count)
    if as_json:
        emit_json(preview)
        return
    for when in preview.next_runs:
        out.print(f"{when:%Y-%m-%d %H:%M} UTC")
    for vm, what in preview.vms.items():
        out.print(f"  {vm}: {what}", highlight=False)


@policy_app.command("delete")
@reports_errors
def policy_delete(name: str, dry_run: bool = typer.Option(False, "--dry-run", help="Only say what it would take."),
                  as_json: bool = JsonOpt) -> None:
    """Delete a policy (under the deletion rules: it may go to the recycle bin)."""
    impact = state.client.delete_policy(name, dry_run)
    if as_json:
        emit_json(impact)
        return
    out.print(("would delete" if dry_run else "deleted") + f" policy {impact.name} ({impact.mode}):", highlight=False)
    for line in impact.takes:
        out.print(f"  {line}", highlight=False)
