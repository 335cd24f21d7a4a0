"""The `cairn` command line. Long work shows progress bars; every listing has --json.

A command works on this machine's appliance (its data dir, in this process), or on one named by
--url, $CAIRN_URL or the last `cairn login`, through its API: the same command, the same output
(client.py). The command groups are imported only when one of them runs (`LazyGroup`): `cairn
--help` and a quick listing must not pay for FastAPI, QEMU's QMP library or the store's codecs.
"""
from __future__ import annotations

import contextlib
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer import _click as click  # typer carries its own click; its groups speak only that one's types
from typer.core import TyperGroup

from appliance.settings import UMASK

from .common import CliError, err, reports_errors, state

if TYPE_CHECKING:
    from fastapi import FastAPI

    from appliance.server.local_socket import LocalSocketServer

# name: (module, its Typer app, the one-line help `cairn --help` shows without importing it)
GROUPS: dict[str, tuple[str, str, str]] = {
    "vm": ("appliance.cli.vm", "vm_app", "Define, run, clone and place VMs."),
    "image": ("appliance.cli.vm", "image_app", "The image library: ISO media and disk images, checksummed."),
    "backup": ("appliance.cli.backup", "backup_app", "Back up VMs and list backups."),
    "store": ("appliance.cli.store", "store_app", "Create, check and clean up the chunk store."),
    "snapshot": ("appliance.cli.snapshot", "snapshot_app",
                 "Snapshot trees of VM disks: live or offline, revert, delete by commit or pull."),
    "restore": ("appliance.cli.restore", "restore_app",
                "Restore disks and VMs from backups (works from the store alone)."),
    "db": ("appliance.cli.db", "db_app", "The catalog's schema: migrations (on the appliance's host)."),
    "user": ("appliance.cli.user", "user_app",
             "Users of the web API, on the appliance's host (e.g. to recover a lost admin)."),
    "job": ("appliance.cli.job", "job_app", "List, show and cancel jobs."),
    "policy": ("appliance.cli.policy", "policy_app", "Backup and snapshot policies (run by `cairn serve`)."),
    "network": ("appliance.cli.network", "network_app", "VM networks: a Linux bridge, an address pool and dnsmasq."),
    "pool": ("appliance.cli.network", "pool_app",
             "Compute pools (hosts), storage pools (folders for VM disks) and address pools."),
    "notify": ("appliance.cli.notify", "notify_app", "Alarms and notifications: targets, rules, quiet hours."),
    "host": ("appliance.cli.host", "host_app",
             "Hosts besides this one: libvirt hosts (their domains) and ssh hosts (VMs run by Cairn's agent)."),
    "login": ("appliance.cli.login", "login_app", "Sign in to an appliance: the same commands then work there."),
    "logout": ("appliance.cli.login", "logout_app", "Sign out of it: its access key is revoked."),
}


class LazyGroup(TyperGroup):
    """The root group: a command group's module is imported when that group runs, not before."""

    _describing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *GROUPS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in GROUPS:
            return super().get_command(ctx, cmd_name)
        module, attribute, summary = GROUPS[cmd_name]
        if self._describing:   # the root's --help: a name and a line are all it shows
            return TyperGroup(name=cmd_name, help=summary)
        command = typer.main.get_command(getattr(import_module(module), attribute))
        command.name = cmd_name
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        LazyGroup._describing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            LazyGroup._describing = False


app = typer.Typer(cls=LazyGroup, no_args_is_help=True, help=(
    "Cairn: backup, snapshots and VM management for QEMU/KVM.\n\n"
    "Commands work on this machine's appliance (--data-dir), or on one elsewhere through its API: "
    "`cairn login https://HOST:PORT` once, then the same commands work there (or --url or $CAIRN_URL with "
    "$CAIRN_TOKEN, for one command or a script). Commands of the appliance's host itself (serve, db, user) "
    "say so."))

DataDirOpt = typer.Option(None, "--data-dir", envvar="CAIRN_DATA_DIR",
                          help="This machine's data dir: the catalog, the default store and VM disks. Given, "
                               "commands work here even after a `cairn login`.")
UrlOpt = typer.Option(None, "--url", envvar="CAIRN_URL",
                      help="Work on the appliance at this address through its API (https://HOST:PORT), with the "
                           "access key of `cairn login` or $CAIRN_TOKEN. Default: the last `cairn login`'s.")


@app.callback()
@reports_errors
def main(data_dir: Path | None = DataDirOpt, url: str | None = UrlOpt) -> None:
    from procs import sweep

    os.umask(UMASK)   # before anything is written, by us or by what we start
    state.data_dir = str(data_dir) if data_dir else None
    state.url = _chosen_url(url, data_dir)
    state.url_asked = url is not None
    # Whatever a killed Cairn process left (qemu-nbd holding a disk, mounts, partial files) goes
    # before this one starts its own.
    sweep()


def _chosen_url(url: str | None, data_dir: Path | None) -> str | None:
    """An explicit appliance URL, else an explicit data dir (this machine: None), else the last login's."""
    if data_dir and not url:
        return None
    # Only now: a command on a named data dir reads no login.
    from .login import Logins, canonical_url

    return canonical_url(url) if url else Logins.load().current


CertOpt = typer.Option(None, "--cert", exists=True, dir_okay=False,
                       help="PEM certificate (chain) to serve instead of the generated one.")
KeyOpt = typer.Option(None, "--key", exists=True, dir_okay=False, help="Its PEM private key.")
TrustedProxyOpt = typer.Option(None, "--trusted-proxy", envvar="CAIRN_TRUSTED_PROXIES",
                               help="Address or network of a reverse proxy in front (repeat for more): only its "
                                    "X-Forwarded-For/-Proto are believed. None by default: a client's address "
                                    "is its own.")


@app.command()
@reports_errors
def serve(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(8080, help="Port to listen on."),
          cert: Path | None = CertOpt, key: Path | None = KeyOpt,
          insecure_http: bool = typer.Option(False, "--insecure-http",
                                             help="Plain HTTP, for development: tokens cross the network in clear."),
          trusted_proxy: list[str] | None = TrustedProxyOpt
          ) -> None:
    """Run the appliance's web API over HTTPS (a self-signed certificate kept in <data dir>/tls/ by default).

    It serves the same API on <data dir>/api.sock (mode 0600) to root and the user it runs as:
    `cairn` listings on this machine read through it instead of opening the catalog.

    On the first start, with no user yet, creates user `admin` with a random password written
    to <data dir>/initial-admin-password."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from appliance.server.app import server_app
    from appliance.server.local_socket import ApplianceServer
    from appliance.server.logs import log_config
    from appliance.server.tls import TlsFiles, self_signed

    if (cert is None) != (key is None):
        raise typer.BadParameter("--cert and --key go together")
    if insecure_http and cert:
        raise typer.BadParameter("--insecure-http serves no certificate: drop --cert/--key")
    a = state.this_host()
    tls = None if insecure_http else TlsFiles(cert, key) if cert and key else self_signed(a.settings.tls_dir, host)
    password_file = a.settings.initial_admin_password_file
    if a.users.ensure_initial_admin(password_file):
        # Where the password is, never the password: this output is a log (journald). The file
        # (0600) keeps it for the installer's console until someone removes it.
        err.print(f"created user admin; its password is in {password_file} (readable by root only); "
                  "sign in and change it: POST /api/v1/auth/password", highlight=False, soft_wrap=True)
    address = f"{'http' if tls is None else 'https'}://{_shown_host(host)}:{port}/"
    api = server_app(a, address.rstrip("/"))   # refuses a node that may not serve
    err.print(f"Cairn console at {address} (the API under {address}api/v1, its docs at {address}api/v1/docs)",
              highlight=False, soft_wrap=True)
    if tls is not None:
        err.print(f"certificate {tls.cert}, SHA-256 fingerprint {_fingerprint(tls.cert)}: `cairn login "
                  f"{address.rstrip('/')}` elsewhere shows the same before it trusts it", highlight=False,
                  soft_wrap=True)
    # The client address counts sign-in attempts and goes in the audit log: it comes from a
    # forwarded header only when a proxy the admin named sent it (uvicorn would trust loopback).
    config = uvicorn.Config(api, host=host, port=port, log_level="info", log_config=log_config(),
                            proxy_headers=bool(trusted_proxy), forwarded_allow_ips=trusted_proxy or None,
                            ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None)
    server = ApplianceServer(config, _local_socket(api, a.settings.api_socket))
    with contextlib.suppress(KeyboardInterrupt):   # Ctrl-C: stopped as asked
        server.run()
    if not server.started:
        raise typer.Exit(STARTUP_FAILURE)


def _local_socket(api: FastAPI, path: Path) -> LocalSocketServer | None:
    """The API on the data dir's socket too, for this machine's administrator; None, said, when
    another node's `cairn serve` on this data dir answers there."""
    from appliance.server.local_socket import LocalSocketServer, bind_local_socket

    try:
        bound = bind_local_socket(path)
    except OSError as e:
        raise CliError(f"cannot serve the local socket {path}: {e.strerror or e}") from None
    if bound is None:
        err.print(f"note: another cairn serve answers on {path}: this one serves only on its port",
                  highlight=False, soft_wrap=True)
        return None
    err.print(f"local socket {path}, for root and this user: `cairn` on this machine reads through it",
              highlight=False, soft_wrap=True)
    return LocalSocketServer(api, path, bound)


def _shown_host(host: str) -> str:
    """The listening address as a browser would reach it: a wildcard means this machine's name."""
    import socket

    if host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host


def _fingerprint(cert: Path) -> str:
    """The SHA-256 fingerprint of the (first) certificate of a PEM file, as `cairn login` shows it."""
    import ssl

    from .login import fingerprint_of

    return fingerprint_of(ssl.PEM_cert_to_DER_cert(cert.read_text()))


if __name__ == "__main__":
    sys.exit(app())
