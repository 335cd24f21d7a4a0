"""Freezing the guest's filesystems through the QEMU guest agent, around the instant of a backup.

The agent speaks QMP-like JSON over a virtio-serial channel whose host end is a unix socket.
It has no greeting and the channel may hold stale replies (of a client that gave up), so a
session starts with guest-sync-delimited: the agent answers with a 0xFF byte and then the
number it was given, and everything before that is discarded.

Whether an agent runs at all is asked of QEMU first: a port the guest never opened
(query-chardev's frontend-open) means no agent, and no time is spent waiting for one.
"""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .qmp_protocol import QMP

DELIMITER = b"\xff"


class GuestAgentError(Exception):
    """The guest agent did not answer, or answered with an error."""


class GuestAgent:
    """`async with GuestAgent(socket) as agent: await agent.execute("guest-ping")`."""

    def __init__(self, socket: Path, timeout: float = 30.0):
        self.socket = socket
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket)), self.timeout)
        except (OSError, TimeoutError) as e:
            raise GuestAgentError(f"cannot connect to the guest agent at {self.socket}: {e or 'timeout'}") from e
        await self._sync()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        await self._send(cmd, args)
        reply = await self._reply()
        if "error" in reply:
            raise GuestAgentError(f"{cmd}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            raise GuestAgentError(f"not connected to the guest agent at {self.socket}: open() it first")
        return self._reader, self._writer

    async def _sync(self) -> None:
        token = random.randrange(1, 2**31)
        await self._send("guest-sync-delimited", {"id": token})
        reader, _ = self._streams()
        try:
            await asyncio.wait_for(reader.readuntil(DELIMITER), self.timeout)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
            raise GuestAgentError(f"the guest agent did not answer guest-sync: {e or 'timeout'}") from e
        while (await self._reply()).get("return") != token:
            pass

    async def _send(self, cmd: str, args: dict[str, Any] | None) -> None:
        message: dict[str, Any] = {"execute": cmd}
        if args is not None:
            message["arguments"] = args
        _, writer = self._streams()
        writer.write(json.dumps(message).encode() + b"\n")
        try:
            await asyncio.wait_for(writer.drain(), self.timeout)
        except (OSError, TimeoutError) as e:
            raise GuestAgentError(f"{cmd}: cannot write to the guest agent: {e or 'timeout'}") from e

    async def _reply(self) -> dict[str, Any]:
        reader, _ = self._streams()
        try:
            line = await asyncio.wait_for(reader.readline(), self.timeout)
        except TimeoutError as e:
            raise GuestAgentError(f"no reply from the guest agent within {self.timeout:g}s") from e
        if not line:
            raise GuestAgentError("the guest agent closed the connection")
        try:
            return json.loads(line.lstrip(DELIMITER))
        except ValueError as e:
            raise GuestAgentError(f"the guest agent sent something that is not JSON: {line[:80]!r}") from e


class GuestFreeze:
    """Holds the guest's filesystems frozen while the body runs, and thaws them even if it fails.

    Without a listening agent the body runs anyway: the disks are then crash-consistent, as a
    power cut would leave them. What happened goes to `notes`, for the backup's record."""

    def __init__(self, socket: Path, chardev: str, timeout: float = 30.0):
        self.socket = socket
        self.chardev = chardev
        self.timeout = timeout
        self.notes: list[str] = []

    @asynccontextmanager
    async def around(self, qmp: QMP) -> AsyncIterator[None]:
        if not await self._agent_listening(qmp):
            yield
            return
        agent = GuestAgent(self.socket, self.timeout)
        try:
            await agent.open()
            await self._freeze(agent)
        except GuestAgentError as e:
            await agent.close()
            self.notes.append(f"guest agent did not answer ({e}): the disks are crash-consistent")
            yield
            return
        try:
            yield
        finally:
            await self._thaw(agent)
            await agent.close()

    async def _agent_listening(self, qmp: QMP) -> bool:
        chardevs = await qmp.execute("query-chardev")
        return any(c["label"] == self.chardev and c.get("frontend-open") for c in chardevs)

    async def _freeze(self, agent: GuestAgent) -> None:
        if await agent.execute("guest-fsfreeze-status") == "frozen":
            # A backup that died between freeze and thaw left it so.
            await agent.execute("guest-fsfreeze-thaw")
            self.notes.append("guest agent: thawed filesystems an interrupted backup had left frozen")
        try:
            count = await agent.execute("guest-fsfreeze-freeze")
        except GuestAgentError as e:
            # The agent thaws what it froze before failing; the thaw below makes sure.
            self.notes.append(f"guest agent could not freeze the filesystems ({e}): the disks are crash-consistent")
            return
        self.notes.append(f"guest agent froze {count} filesystem(s) for the instant of the backup")

    async def _thaw(self, agent: GuestAgent) -> None:
        try:
            await agent.execute("guest-fsfreeze-thaw")
            return
        except GuestAgentError:
            pass
        try:   # the connection may be what broke: once more on a new one
            async with GuestAgent(self.socket, self.timeout) as fresh:
                await fresh.execute("guest-fsfreeze-thaw")
        except GuestAgentError as e:
            self.notes.append(f"guest agent could not thaw the filesystems ({e}); the next backup tries again")
