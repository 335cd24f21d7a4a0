"""`Client` of this machine's appliance: its reads through the running appliance's socket.

A listing in this process imports SQLAlchemy's ORM and opens the catalog, which costs more than
the rest of the command (issue 16). When `cairn serve` runs on this data dir, its local socket
(<data dir>/api.sock, appliance/server/local_socket.py) answers the same queries from the same
catalog with the same models: the read-only queries (READS) go there, through RemoteClient, and
print the same. Everything else (jobs, changes, what takes this machine's files) runs in this
process (LocalClient), made when first needed; so does everything when nothing takes the
connection (no appliance running, or the file a killed one left: refused at once).
"""
from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client
    from .remote import RemoteClient

# Client's queries that change nothing and need nothing of this process.
READS = frozenset({"jobs", "job", "events", "vms", "vm", "images", "backups", "backup", "snapshot_tree", "policies"})
PROBE_TIMEOUT = 1.0   # seconds: a running appliance takes the connection at once


class MachineClient:
    def __init__(self, data_dir: Path, socket_path: Path, in_process: Callable[[], Client]):
        self.where = f"this machine ({data_dir})"
        self.socket_path = socket_path
        self.in_process = in_process

    @functools.cached_property
    def local(self) -> Client:
        return self.in_process()

    @functools.cached_property
    def running(self) -> RemoteClient | None:
        """The running appliance, through its socket; None if nothing takes the connection
        (tried with a bare socket: the fallback imports nothing more)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(PROBE_TIMEOUT)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                return None
        from .remote import LocalSocket, RemoteClient

        return RemoteClient(LocalSocket(self.socket_path), token="", token_source="the local socket")

    def __getattr__(self, name: str) -> Any:   # Client's methods: only those not defined here
        if name.startswith("_"):
            raise AttributeError(name)
        if name in READS and self.running is not None:
            return getattr(self.running, name)
        return getattr(self.local, name)
