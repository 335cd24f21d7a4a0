"""The `cairn` command line. Long work shows progress bars; every listing has --json."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from dedup import Store
from restore import restore_disk

from .cli_common import JsonOpt, byte_progress, emit_json, out, reports_errors, state
from .cli_snapshot import snapshot_app
from .cli_store import store_app
from .settings import Settings
from .units import human, parse_size

app = typer.Typer(help="Cairn: backup, snapshots and VM management for QEMU/KVM.", no_args_is_help=True)
vm_app = typer.Typer(help="Define and run VMs.", no_args_is_help=True)
backup_app = typer.Typer(help="Back up VMs and list backups.", no_args_is_help=True)
app.add_typer(vm_app, name="vm")
app.add_typer(backup_app, name="backup")
app.add_typer(store_app, name="store")
app.add_typer(snapshot_app, name="snapshot")


@app.callback()
def main(data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="CAIRN_DATA_DIR",
                                                 help="Holds the catalog, the default store and VM disks.")) -> None:
    state.data_dir = str(data_dir) if data_dir else None



@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(8080, help="Port to listen on.")) -> None:
    """Run the appliance's web API."""
    import uvicorn

    from .api import create_app
    uvicorn.run(create_app(state.appliance), host=host, port=port, log_level="info")


@vm_app.command("create")
@reports_errors
def vm_create(name: str,
              disk: list[str] = typer.Option([], "--disk", help="Size of a new blank qcow2 disk (repeat for more)."),
              image: Optional[Path] = typer.Option(None, help="Base image for the first disk (a thin overlay on it)."),
              memory: int = typer.Option(256, help="Memory in MiB."),
              vcpus: int = typer.Option(1, help="Virtual CPUs."),
              kernel: Optional[Path] = typer.Option(None, help="Kernel for direct boot."),
              initrd: Optional[Path] = typer.Option(None, help="Initrd for direct boot."),
              append: Optional[str] = typer.Option(None, help="Kernel command line for direct boot."),
              as_json: bool = JsonOpt) -> None:
    """Define a new VM with blank qcow2 disks."""
    spec = state.appliance.vms.create(name, [parse_size(d) for d in disk], memory_mib=memory, vcpus=vcpus,
                                      kernel=_opt(kernel), initrd=_opt(initrd), append=append,
                                      base_image=_opt(image))
    if as_json:
        emit_json(spec.to_dict())
    else:
        out.print(f"created VM {name} with disks " + ", ".join(f"{d.name} ({d.path})" for d in spec.disks))


@vm_app.command("start")
@reports_errors
def vm_start(name: str, as_json: bool = JsonOpt) -> None:
    """Start a VM (QEMU runs on after this command returns)."""
    view = asyncio.run(state.appliance.vms.start(name))
    emit_json(view.to_dict()) if as_json else out.print(f"{name}: {view.status.state} (pid {view.status.pid})")


@vm_app.command("stop")
@reports_errors
def vm_stop(name: str, timeout: float = typer.Option(30.0, help="Seconds to wait for a clean shutdown."),
            force: bool = typer.Option(False, "--force", help="Do not ask the guest: quit QEMU at once."),
            as_json: bool = JsonOpt) -> None:
    """Shut a VM down: ACPI power button first, then forced after --timeout."""
    view = asyncio.run(state.appliance.vms.stop(name, timeout=timeout, force=force))
    emit_json(view.to_dict()) if as_json else out.print(f"{name}: {view.status.state}")


@vm_app.command("list")
@reports_errors
def vm_list(as_json: bool = JsonOpt) -> None:
    """List VMs and their state."""
    views = state.appliance.vms.list()
    if as_json:
        emit_json([v.to_dict() for v in views])
        return
    table = Table("name", "state", "vcpus", "memory", "disks")
    for v in views:
        table.add_row(v.spec.name, v.status.state, str(v.spec.vcpus), f"{v.spec.memory_mib} MiB",
                      ", ".join(d.name for d in v.spec.disks))
    out.print(table)


@vm_app.command("show")
@reports_errors
def vm_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show a VM's definition, state and disks."""
    view = state.appliance.vms.show(name)
    if as_json:
        emit_json(view.to_dict())
        return
    out.print(f"[bold]{name}[/bold]  {view.status.state}  {view.spec.vcpus} vCPU  {view.spec.memory_mib} MiB")
    for d in view.spec.disks:
        out.print(f"  {d.name}  {d.format}  {d.path}")


@vm_app.command("delete")
@reports_errors
def vm_delete(name: str, yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Delete a stopped VM and its disks (its backups stay in the store)."""
    if not yes and not typer.confirm(f"Delete VM {name} and its disks?"):
        raise typer.Exit(1)
    state.appliance.vms.delete(name)
    out.print(f"deleted VM {name}")


@backup_app.command("create")
@reports_errors
def backup_create(vm: str, full: bool = typer.Option(False, "--full", help="Read every disk in full."),
                  as_json: bool = JsonOpt) -> None:
    """Back up a VM, running or stopped: incremental from its last backup unless --full."""
    a = state.appliance
    spec = a.vms.spec(vm)
    with byte_progress() as bars:
        tasks: dict[str, Any] = {}

        def progress(disk: str, done: int, total: int) -> None:
            if disk not in tasks:
                tasks[disk] = bars.add_task(f"{vm}/{disk}", total=total)
            bars.update(tasks[disk], completed=done, total=total)
        result = asyncio.run(a.backups.create(spec, full=full, progress=progress))
    m = result.manifest
    if as_json:
        emit_json(json.loads(m.to_json()))
        return
    read = sum(d.stats.bytes_read for d in m.disks)
    stored = sum(d.stats.bytes_stored for d in m.disks)
    out.print(f"backup {m.backup_id}: {m.kind}, read {human(read)}, stored {human(stored)} new")
    for note in m.notes:
        out.print(f"  note: {note}")


@backup_app.command("list")
@reports_errors
def backup_list(vm: Optional[str] = typer.Option(None, help="Only this VM's backups."), as_json: bool = JsonOpt) -> None:
    """List backups recorded in the catalog."""
    records = state.appliance.backups.list(vm)
    if as_json:
        emit_json([backup_dict(r) for r in records])
        return
    table = Table("id", "vm", "kind", "status", "started", "read", "stored", "note")
    for r in records:
        table.add_row(r.id, r.vm_name, r.kind, r.status, r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                      human(r.bytes_read), human(r.bytes_stored), r.error or "; ".join(r.notes))
    out.print(table)


def backup_dict(r: Any) -> dict[str, Any]:
    return {c: getattr(r, c) for c in ("id", "vm_name", "store", "kind", "status", "parent", "checkpoint", "started_at",
                                       "finished_at", "size", "bytes_read", "bytes_stored", "error", "notes")}


@app.command("restore")
@reports_errors
def restore_cmd(backup: str,
                to: Path = typer.Option(..., "--to", help="File to create."),
                fmt: str = typer.Option("raw", "--format", help="raw or qcow2."),
                store: Optional[Path] = typer.Option(None, "--store", help="Store directory (default: the data dir's)."),
                disk: Optional[str] = typer.Option(None, "--disk", help="Which disk, if the backup has several."),
                force: bool = typer.Option(False, "--force", help="Replace an existing file."),
                as_json: bool = JsonOpt) -> None:
    """Restore one disk of a backup into a file. Needs only the store: no catalog, no server."""
    if fmt not in ("raw", "qcow2"):
        raise ValueError(f"--format must be raw or qcow2, not {fmt}")
    source = Store.open(store or Settings.resolve(state.data_dir).store_dir)
    with byte_progress() as bars:
        task = bars.add_task(f"restore {backup}", total=None)
        result = restore_disk(source, backup, disk, to, fmt=fmt, force=force,
                              progress=lambda done, total: bars.update(task, completed=done, total=total))
    if as_json:
        emit_json({"backup": backup, "target": str(to), "format": fmt, **vars(result)})
    else:
        out.print(f"restored {backup} to {to} ({fmt}): {human(result.bytes_written)} written "
                  f"in {result.seconds:.1f} s")




def _opt(p: Optional[Path]) -> Optional[str]:
    return str(p) if p else None


if __name__ == "__main__":
    sys.exit(app())
