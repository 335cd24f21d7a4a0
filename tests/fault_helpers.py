"""Helpers for fault tests: Cairn processes of their own that die mid-operation, a store
backend whose process dies at its n-th change, and looking for what a dead process left.

A crash is made two ways, both without any cleanup running (no `finally`, no atexit, no
Python at all), as under kill -9:
- SIGKILL from the test at a pause point: the Cairn process calls `pause("what")` from a hook
  of its own (a progress report, a QMP job paused by the test), says so on a pipe and waits;
  the test reads that and kills it, so the kill lands mid-operation every time (or lets it
  go on, once it has made something else fail there).
- os._exit() right after a chosen step (the k-th catalog transaction, the k-th change to the
  store): the process ends on the spot, its helpers die with it (their parent-death signal).
"""
from __future__ import annotations

import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from test_helper_processes import processes_naming

from appliance.context import Appliance
from appliance.errors import ConflictError

DIED = 17       # exit code of a process that died at its crash point
REFUSED = 3     # exit code of a process whose operation Cairn refused (ConflictError)

Pause = Callable[[str], None]


@dataclass
class Child:
    """A forked Cairn process: `wait()` for its end, or `kill_when_paused()` it, or
    `wait_paused()` and `resume()` it."""
    pid: int
    said: IO[str]
    go: IO[str]
    code: int | None = None
    output: str = ""

    def wait_paused(self) -> None:
        line = self.said.readline()
        self.output += line
        assert line.startswith("paused"), f"the process ended before its pause point: {self.output}"

    def resume(self) -> None:
        self.go.write("go\n")
        self.go.flush()

    def kill_when_paused(self) -> bool:
        """SIGKILL the process once it says it paused; False if it ended first (see `code`)."""
        for line in self.said:
            self.output += line
            if line.startswith("paused"):
                os.kill(self.pid, signal.SIGKILL)
                self._reap()
                return True
        self._reap()
        return False

    def wait(self) -> int:
        self.output += self.said.read()
        self._reap()
        assert self.code is not None
        return self.code

    def _reap(self) -> None:
        self.said.close()
        self.go.close()
        self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def forked(data_dir: Path, work: Callable[[Appliance, Pause], Any]) -> Child:
    """Run `work(appliance, pause)` in a Cairn process of its own, on its own Appliance of
    `data_dir` (see forked_process)."""
    return forked_process(lambda pause: work(Appliance.open(str(data_dir)), pause))


def forked_process(work: Callable[[Pause], Any]) -> Child:
    """Run `work(pause)` in a child process.

    The child exits 0 when `work` returns, REFUSED when Cairn refused it, 1 on any other error
    (its traceback on stderr), or as the work makes it (os._exit(DIED) at a crash point)."""
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into the test
        code = 1
        try:
            os.close(read_end)
            os.close(go_write)
            out = os.fdopen(write_end, "w", buffering=1)
            go = os.fdopen(go_read)

            def pause(what: str) -> None:
                """Say so, and wait until the test resumes (or kills) this process."""
                out.write(f"paused {what}\n")
                if not go.readline():
                    threading.Event().wait()
            try:
                work(pause)
                code = 0
            except ConflictError as err:
                out.write("refused " + str(err).replace("\n", " ") + "\n")
                code = REFUSED
        except BaseException:
            traceback.print_exc()
        os._exit(code)
    os.close(write_end)
    os.close(go_read)
    return Child(pid, os.fdopen(read_end), os.fdopen(go_write, "w"))


def die() -> None:
    os._exit(DIED)


class DyingBackend:
    """A store's backend whose process dies at its `at`-th change to the store: a rename, a
    removal, a touch, or a whole-file write, which dies half-written (its temporary file stays,
    as a kill mid-write leaves it). Every read goes through unchanged."""

    def __init__(self, backend: Any, at: int):
        self._backend = backend
        self._left = at
        self._counting = threading.Lock()      # a backup's workers write at once
        self.location = backend.location
        self.clock_error_ns = backend.clock_error_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _dies_now(self) -> bool:
        with self._counting:
            self._left -= 1
            return self._left == 0

    def rename(self, source: str, target: str) -> None:
        if self._dies_now():
            die()
        self._backend.rename(source, target)

    def remove(self, name: str) -> None:
        if self._dies_now():
            die()
        self._backend.remove(name)

    def remove_tree(self, name: str) -> None:
        if self._dies_now():
            die()
        self._backend.remove_tree(name)

    def touch(self, name: str) -> bool:
        if self._dies_now():
            die()
        return self._backend.touch(name)

    @contextmanager
    def atomic_writer(self, name: str) -> Iterator[Any]:
        dies = self._dies_now()
        with self._backend.atomic_writer(name) as f:
            yield _DyingFile(f) if dies else f


class _DyingFile:
    """Dies once something was written: the temporary file holds part of what was meant."""

    def __init__(self, f: Any):
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def write(self, data: bytes) -> int:
        self._f.write(data[:max(1, len(data) // 2)])
        self._f.flush()
        die()
        raise AssertionError("unreachable")


def helpers_naming(text: str) -> list[tuple[int, list[str]]]:
    """Cairn's helper processes (qemu-nbd, nbdkit, nbdfuse, ssh, sshfs) naming `text`;
    QEMUs, which are no helpers, are left out."""
    helpers = {"qemu-nbd", "nbdkit", "nbdfuse", "ssh", "sshfs", "setpriv"}
    return [(pid, argv) for pid, argv in processes_naming(text) if Path(argv[0]).name in helpers]
