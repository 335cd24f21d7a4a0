"""The `cairn` command line. Long work shows progress bars; every listing has --json."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .backups import BackupOptions
from .checkpoints import DEFAULT_FULL_EVERY
from .cli_common import (
    JsonOpt,
    byte_progress,
    emit_json,
    err,
    out,
    reports_errors,
    state,
)
from .cli_db import db_app
from .cli_host import host_app
from .cli_job import job_app
from .cli_network import network_app, pool_app
from .cli_policy import policy_app
from .cli_restore import restore_app
from .cli_snapshot import snapshot_app
from .cli_store import store_app
from .cli_user import user_app
from .cli_vm import image_app, vm_app
from .settings import UMASK
from .units import human

app = typer.Typer(help="Cairn: backup, snapshots and VM management for QEMU/KVM.", no_args_is_help=True)
backup_app = typer.Typer(help="Back up VMs and list backups.", no_args_is_help=True)
app.add_typer(vm_app, name="vm")
app.add_typer(image_app, name="image")
app.add_typer(backup_app, name="backup")
app.add_typer(store_app, name="store")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(restore_app, name="restore")
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(job_app, name="job")
app.add_typer(policy_app, name="policy")
app.add_typer(network_app, name="network")
app.add_typer(pool_app, name="pool")
app.add_typer(host_app, name="host")


DataDirOpt = typer.Option(None, "--data-dir", envvar="CAIRN_DATA_DIR",
                          help="Holds the catalog, the default store and VM disks.")


@app.callback()
def main(data_dir: Path | None = DataDirOpt) -> None:
    os.umask(UMASK)   # before anything is written, by us or by what we start
    state.data_dir = str(data_dir) if data_dir else None


CertOpt = typer.Option(None, "--cert", exists=True, dir_okay=False,
                       help="PEM certificate (chain) to serve instead of the generated one.")
KeyOpt = typer.Option(None, "--key", exists=True, dir_okay=False, help="Its PEM private key.")


@app.command()
@reports_errors
def serve(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(8080, help="Port to listen on."),
          cert: Path | None = CertOpt, key: Path | None = KeyOpt,
          insecure_http: bool = typer.Option(False, "--insecure-http",
                                             help="Plain HTTP, for development: tokens cross the network in clear."),
          trusted_proxy: list[str] = typer.Option(
              [], "--trusted-proxy", envvar="CAIRN_TRUSTED_PROXIES",
              help="Address or network of a reverse proxy in front (repeat for more): only its "
                   "X-Forwarded-For/-Proto are believed. None by default: a client's address is its own.")
          ) -> None:
    """Run the appliance's web API over HTTPS (a self-signed certificate kept in <data dir>/tls/ by default).

    On the first start, with no user yet, creates user `admin` with a random password written
    to <data dir>/initial-admin-password."""
    import uvicorn

    from .api import create_app
    from .logs import log_config
    from .tls import TlsFiles, self_signed

    if (cert is None) != (key is None):
        raise typer.BadParameter("--cert and --key go together")
    if insecure_http and cert:
        raise typer.BadParameter("--insecure-http serves no certificate: drop --cert/--key")
    a = state.appliance
    tls = None if insecure_http else TlsFiles(cert, key) if cert and key else self_signed(a.settings.tls_dir, host)
    password_file = a.settings.initial_admin_password_file
    if a.users.ensure_initial_admin(password_file):
        # Where the password is, never the password: this output is a log (journald). The file
        # (0600) keeps it for the installer's console until someone removes it.
        err.print(f"created user admin; its password is in {password_file} (readable by root only); "
                  "sign in and change it: POST /api/v1/auth/password", highlight=False, soft_wrap=True)
    scheme = "http" if tls is None else "https"
    err.print(f"Cairn API at {scheme}://{host}:{port}/api/v1 (docs: /api/v1/docs)"
              + (f", certificate {tls.cert}" if tls else ""), soft_wrap=True)
    # The client address counts sign-in attempts and goes in the audit log: it comes from a
    # forwarded header only when a proxy the admin named sent it (uvicorn would trust loopback).
    uvicorn.run(create_app(a), host=host, port=port, log_level="info", log_config=log_config(),
                proxy_headers=bool(trusted_proxy), forwarded_allow_ips=list(trusted_proxy) or None,
                ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None)


@backup_app.command("create")
@reports_errors
def backup_create(vm: str, full: bool = typer.Option(False, "--full", help="Read every disk in full."),
                  full_every: int = typer.Option(DEFAULT_FULL_EVERY, min=0,
                                                 help="Read a disk in full after this many incrementals of it."),
                  transport: str = typer.Option("pull", help="pull: Cairn reads an NBD export; push: QEMU writes "
                                                "into a target Cairn serves."),
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
        options = BackupOptions(full_every=full_every, transport=transport)
        result = asyncio.run(a.backups.create(spec, full=full, progress=progress, options=options))
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
def backup_list(vm: str | None = typer.Option(None, help="Only this VM's backups."), as_json: bool = JsonOpt) -> None:
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


if __name__ == "__main__":
    sys.exit(app())
