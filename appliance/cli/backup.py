"""`cairn backup ...`: back up VMs (as jobs, like the API and policies do), list backups, and
protect them from pruning."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from appliance.backups.options import DEFAULT_FULL_EVERY
from appliance.units import human

from .client import Listing
from .common import EXCLUDE_OPT, INCLUDE_OPT, JsonOpt, emit_json, out, print_table, reports_errors, state, table
from .listing import FILTER_OPT, OFFSET_OPT, limit_option, say_page, sort_option

if TYPE_CHECKING:
    from appliance.api.models import BackupOut

backup_app = typer.Typer(help="Back up VMs, list and protect backups.", no_args_is_help=True)


@backup_app.command("create")
@reports_errors
def backup_create(vm: str, full: bool = typer.Option(False, "--full", help="Read every disk in full."),
                  full_every: int = typer.Option(DEFAULT_FULL_EVERY, min=0,
                                                 help="Read a disk in full after this many incrementals of it."),
                  transport: str = typer.Option("pull", help="pull: Cairn reads an NBD export; push: QEMU writes "
                                                "into a target Cairn serves."),
                  include: list[str] = INCLUDE_OPT, exclude: list[str] = EXCLUDE_OPT,
                  as_json: bool = JsonOpt) -> None:
    """Back up a VM, running or stopped: incremental from its last backup unless --full. Every disk
    that holds data is read unless --include/--exclude say otherwise.

    Runs as a job (`cairn job list` shows it), after any other job on the VM; Ctrl-C cancels it
    and a backup that does not complete leaves nothing behind."""
    from appliance.jobs.params import BackupParams

    from .follow import run_job

    params = BackupParams.model_validate({"vm": vm, "full": full, "full_every": full_every, "transport": transport,
                                          "include": include or [], "exclude": exclude or []})
    result = run_job("backup", params)
    say_backup(result, vm, as_json)


def say_backup(result: dict[str, Any], vm: str, as_json: bool) -> None:
    """A backup job's result: as JSON, or a line, then each disk read (incrementally from which
    checkpoint, or in full), then the notes saying why a disk was read in full or left out."""
    if as_json:
        emit_json(result)
        return
    out.print(f"backup {result['backup_id']} of {vm}: {result['kind']}, read {human(result['bytes_read'])}, "
              f"stored {human(result['bytes_stored'])} new", highlight=False)
    for disk in result["disks"]:
        how = f"incremental since {disk['since']}" if disk["since"] else "full read"
        out.print(f"  {disk['disk']}: {how}, read {human(disk['bytes_read'])}", highlight=False)
    for note in result["notes"]:
        out.print(f"  note: {note}", highlight=False)


@backup_app.command("list")
@reports_errors
def backup_list(vm: str | None = typer.Option(None, help="Only this VM's backups."), filters: list[str] = FILTER_OPT,
                sort: str = sort_option("-started_at"), limit: int = limit_option(50), offset: int = OFFSET_OPT,
                as_json: bool = JsonOpt) -> None:
    """Backups recorded in the catalog, newest first; fields: id, vm_name, kind, status, started_at,
    finished_at, size, bytes_read, bytes_stored, protected, error... A backup's ID (what a restore
    takes) is its start time in UTC and a suffix; which are protected, notes and errors follow the table
    (it stays within 80 columns)."""
    page = state.client.backups(vm, Listing(filters, sort, limit, offset))
    say_page(len(page.items), offset, page.total, "backups")
    backups = page.items
    if as_json:
        emit_json(backups)
        return
    listing = table("id", "vm", "kind", "status", "read", "stored", numbers=("read", "stored"))
    for b in backups:
        listing.add_row(b.id, b.vm_name, b.kind, b.status, human(b.bytes_read), human(b.bytes_stored))
    print_table(listing)
    for b in backups:
        protection = ["protected: no prune removes it"] if b.protected else []
        for note in protection + ([f"error: {b.error}"] if b.error else b.notes):
            out.print(f"{b.id}: {note}", highlight=False, soft_wrap=False)


@backup_app.command("protect")
@reports_errors
def backup_protect(backup_id: str, as_json: bool = JsonOpt) -> None:
    """Protect a backup: no prune (by hand or by a policy's retention) removes it, and it cannot
    be deleted until it is unprotected. Only a backup that completed can be."""
    say_protection(state.client.protect_backup(backup_id, True), as_json)


@backup_app.command("unprotect")
@reports_errors
def backup_unprotect(backup_id: str, as_json: bool = JsonOpt) -> None:
    """Unprotect a backup: retention rules and deletion apply to it again."""
    say_protection(state.client.protect_backup(backup_id, False), as_json)


def say_protection(backup: BackupOut, as_json: bool) -> None:
    if as_json:
        emit_json(backup)
    elif backup.protected:
        out.print(f"backup {backup.id} of {backup.vm_name} is protected: no prune removes it, and it cannot be "
                  f"deleted until `cairn backup unprotect {backup.id}`", highlight=False)
    else:
        out.print(f"backup {backup.id} of {backup.vm_name} is no longer protected: retention rules and deletion "
                  "apply to it", highlight=False)
