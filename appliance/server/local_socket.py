"""The appliance's local socket: `cairn serve` serves its API on <data dir>/api.sock too.

A `cairn` listing on this machine then asks the running appliance (plain HTTP over the socket,
no TLS, no token) instead of importing SQLAlchemy and opening the catalog itself, which costs
more than the rest of the command (issue 16; the client: appliance/cli/machine.py).

Who calls is what the kernel says of the connection (SO_PEERCRED), never what a request says:
the listener puts the peer's uid in each request's scope state (auth.SOCKET_PEER_UID), where no
TCP request has it, and the request gate answers root and the user `cairn serve` runs as, reads
only (auth.socket_caller). The file is 0600 besides. The socket's server runs beside the HTTPS
one in the same loop, without a lifespan of its own: the node's services start once.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from appliance.api.auth import SOCKET_PEER_UID

PEER_CREDENTIALS = struct.Struct("3i")   # struct ucred: pid, uid, gid
SOCKET_MODE = 0o600


class PeerCredentialsProtocol(H11Protocol):
    """HTTP/1.1 on the local socket: every request of a connection carries, in its scope state,
    the uid of the process that connected."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        connection = transport.get_extra_info("socket")
        _, uid, _ = PEER_CREDENTIALS.unpack(
            connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size))
        self.app_state = {**self.app_state, SOCKET_PEER_UID: uid}


def bind_local_socket(path: Path) -> socket.socket | None:
    """The socket bound at `path`, mode 0600 before it listens; a file a killed server left there
    is replaced. None if a running `cairn serve` answers there (another node's on this data dir)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return None
        except OSError:   # no file, or nobody listens on it any more
            path.unlink(missing_ok=True)
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        bound.bind(str(path))   # made under the process's umask (0077): never more open than 0700
        os.chmod(path, SOCKET_MODE)
    except OSError:
        bound.close()
        raise
    return bound


class LocalSocketServer(uvicorn.Server):
    """The API on the local socket, for as long as the HTTPS server serving beside it runs
    (ApplianceServer): no lifespan, no signal handlers of its own. Its file is removed when it stops."""

    def __init__(self, app: FastAPI, path: Path, bound: socket.socket):
        super().__init__(uvicorn.Config(app, lifespan="off", http=PeerCredentialsProtocol, proxy_headers=False,
                                        log_config=None))
        self.path = path
        self.bound = bound

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield   # the HTTPS server handles them, and stops this one

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets=[self.bound])
        finally:
            self.path.unlink(missing_ok=True)


class ApplianceServer(uvicorn.Server):
    """uvicorn's server of the API on its TCP address, which runs the local socket's beside it in
    the same loop: from when its lifespan has started the node's services to before it stops them."""

    def __init__(self, config: uvicorn.Config, beside: LocalSocketServer | None):
        super().__init__(config)
        self.beside = beside
        self.beside_serving: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.beside is not None:
            self.beside_serving = asyncio.create_task(self.beside.serve())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            if self.beside is not None and self.beside_serving is not None:
                self.beside.should_exit = True
                await self.beside_serving
        finally:
            await super().shutdown(sockets)
