"""`cairn backup ...`: back up VMs (as jobs, like the API and policies do) and list backups."""
from __future__ import annotations

from typing import Any

import typer

from appliance.backups.options import DEFAULT_FULL_EVERY
from appliance.units import human

from .common import EXCLUDE_OPT, INCLUDE_OPT, JsonOpt, emit_json, out, reports_errors, state
from .listing import FILTER_OPT, OFFSET_OPT, limit_option, say_page, sort_option

backup_app = typer.Typer(help="Back up VMs and list backups.", no_args_is_help=True)


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
    finished_at, size, bytes_read, bytes_stored, error..."""
    from appliance.backups.catalog import BackupCatalog
    from appliance.catalog.query import ListQuery, Total

    total = Total()
    records = BackupCatalog(state.appliance.catalog).page(ListQuery.parse(limit, offset, sort, filters), vm=vm,
                                                          response=total)
    say_page(len(records), offset, total.count, "backups")
    if as_json:
        emit_json([backup_dict(r) for r in records])
        return
    from rich.table import Table

    table = Table("id", "vm", "kind", "status", "started", "read", "stored", "note")
    for r in records:
        table.add_row(r.id, r.vm_name, r.kind, r.status, r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                      human(r.bytes_read), human(r.bytes_stored), r.error or "; ".join(r.notes))
    out.print(table)


def backup_dict(r: Any) -> dict[str, Any]:
    return {c: getattr(r, c) for c in ("id", "vm_name", "store", "kind", "status", "parent", "checkpoint", "started_at",
                                       "finished_at", "size", "bytes_read", "bytes_stored", "error", "notes")}
