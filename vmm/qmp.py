"""A short-lived QMP session on top of qemu.qmp.

QEMU's `-qmp`/`-mon` socket chardev serves one client at a time: while a session is open, other
clients sit in the listen backlog without a greeting. So sessions are meant to be brief
(connect, work, disconnect) and connecting waits (until a deadline) for the monitor to be free.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AbstractContextManager, suppress
from types import TracebackType
from typing import Any, Self, cast

from qemu.qmp import EventListener, ExecuteError, Message, QMPClient
from qemu.qmp import QMPError as LibQMPError
from qemu.qmp.events import EventFilter, EventNames

from .errors import (
    JobFailedError,
    QemuIOError,
    QMPCommandError,
    QMPConnectError,
    QMPDisconnectedError,
    QMPTimeoutError,
)

# Job statuses after which a job never changes by itself again (see QAPI JobStatus).
_FINAL_JOB_STATUSES = ("concluded", "null")


class QMPSession:
    """`async with QMPSession(path) as qmp: await qmp.execute("query-status")`.

    Events are only seen while the session is open: QEMU does not queue them for absent clients.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, connect_timeout: float = 10.0,
                 client_name: str = "cairn"):
        self.socket_path = os.fspath(socket_path)
        self.connect_timeout = connect_timeout
        self._client_name = client_name
        self._client: QMPClient | None = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, retrying until connect_timeout: the socket may not exist yet (QEMU starting)
        or the monitor may be busy with another client."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        last_error = "socket never appeared"
        while (remaining := deadline - loop.time()) > 0:
            # Checking first keeps qemu.qmp from logging an error for every early attempt.
            if os.path.exists(self.socket_path):
                client = QMPClient(self._client_name)
                try:
                    await asyncio.wait_for(client.connect(self.socket_path), remaining)
                except TimeoutError:
                    raise QMPConnectError(
                        self.socket_path, f"no QMP greeting within {self.connect_timeout:g}s "
                        "(is another client holding the monitor?)") from None
                except (LibQMPError, OSError, EOFError) as err:
                    last_error = str(err)
                else:
                    self._client = client
                    return
            await asyncio.sleep(min(0.05, max(remaining, 0)))
        raise QMPConnectError(self.socket_path,
                              f"gave up after {self.connect_timeout:g}s: {last_error}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        # disconnect() re-raises what broke the connection, typically EOF because QEMU exited
        # (after `quit`, or a guest poweroff). There is nothing left to release then.
        with suppress(LibQMPError, OSError, EOFError):
            await client.disconnect()

    @property
    def events(self) -> EventListener:
        """qemu.qmp's default listener: every event received since connect()."""
        return self._require_client().events

    def listener(self, names: EventNames = (), event_filter: EventFilter | None = None
                 ) -> AbstractContextManager[EventListener]:
        """A temporary listener for some events (see qemu.qmp's QMPClient.listener)."""
        return self._require_client().listener(names, event_filter)

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float | None = None) -> Any:
        client = self._require_client()
        try:
            return await asyncio.wait_for(client.execute(cmd, args), timeout)
        except ExecuteError as err:
            raise QMPCommandError(cmd, err.error.error.desc, err.error_class) from err
        except TimeoutError as err:
            raise QMPTimeoutError(f"{cmd}: no reply within {timeout:g}s") from err
        except (LibQMPError, OSError, EOFError) as err:
            raise QMPDisconnectedError(cmd, str(err) or type(err).__name__) from err

    async def hmp(self, cmdline: str) -> str:
        """Run a human monitor command and return its text output."""
        result: str = await self.execute("human-monitor-command", {"command-line": cmdline})
        return result

    async def qemu_io(self, node: str, command: str) -> None:
        """Run a qemu-io command (e.g. "write -P 0xaa 2M 64k") on a block node.

        HMP qemu-io returns "" on success and the error text on failure instead of failing, so
        any output is raised as QemuIOError. Its normal output, including `read -v` dumps and
        `read -P` pattern mismatches, goes to QEMU's stdout (/dev/null for a daemonized QEMU):
        use it to write or flush, and check data some other way. Writes need share-rw=on on
        the device, which vmm always sets.
        """
        quoted = command.replace("\\", "\\\\").replace('"', '\\"')
        output = await self.hmp(f'qemu-io {node} "{quoted}"')
        if output.strip():
            raise QemuIOError(node, command, output)

    async def wait_job(self, job_id: str, status: str = "concluded",
                       timeout: float = 60.0) -> dict[str, Any] | None:
        """Wait until job `job_id` reaches `status` and return its query-jobs entry.

        Returns None if the job vanished from query-jobs: most jobs dismiss themselves once
        finished, so a vanished job is done, unless a BLOCK_JOB_COMPLETED event carried an
        error, which raises JobFailedError. A job that ends with an error or finishes without
        passing through `status` is returned too (or raised, on error) rather than waited for.
        Events only tell when to look again; query-jobs is the truth.
        """
        def about_this_job(event: Message) -> bool:
            data = event.get("data")
            return isinstance(data, dict) and job_id in (data.get("id"), data.get("device"))

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        completion_error: str | None = None
        woken_by: list[Message] = []
        with self.listener(("JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED"),
                           about_this_job) as listener:
            while True:
                for event in woken_by + listener.clear():
                    data = cast(dict[str, Any], event["data"])
                    if event["event"] == "BLOCK_JOB_COMPLETED" and "error" in data:
                        completion_error = str(data["error"])
                jobs: list[dict[str, Any]] = await self.execute("query-jobs")
                job = next((j for j in jobs if j["id"] == job_id), None)
                if job is None:
                    if completion_error is not None:
                        raise JobFailedError(job_id, completion_error)
                    return None
                if job.get("error") and job["status"] in _FINAL_JOB_STATUSES:
                    raise JobFailedError(job_id, job["error"], job)
                if job["status"] == status or job["status"] in _FINAL_JOB_STATUSES:
                    return job
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise QMPTimeoutError(f"job {job_id!r} still {job['status']!r} after "
                                          f"{timeout:g}s, waiting for {status!r}")
                try:
                    woken_by = [await asyncio.wait_for(listener.get(), min(remaining, 1.0))]
                except TimeoutError:
                    woken_by = []

    def _require_client(self) -> QMPClient:
        if self._client is None:
            raise QMPDisconnectedError("(none)", "the session is not connected")
        return self._client
