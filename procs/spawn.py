"""Starting a helper so that it dies with the process that needs it.

The kernel's parent-death signal (prctl PR_SET_PDEATHSIG) kills a process the moment its
parent dies, however that happens: SIGKILL, a crash, the OOM killer. `setpriv --pdeathsig`
sets it in the child between fork and exec, where Python code (a preexec_fn) would risk a
deadlock in a process whose other threads hold locks.

"Parent" means the *thread* that forked: a helper started from a worker thread (asyncio's
to_thread, a job's thread) would be killed when that thread ends, long before its owner is
done with it. So every such helper is forked by one thread that lives as long as the process.

Each helper leads a process group of its own: a Ctrl-C at the terminal reaches Cairn, which
stops its helpers in order (a writable qemu-nbd must close its image cleanly), and a sweep
kills a helper together with whatever the helper started itself (sshfs's ssh).

A daemonizing helper (qemu-nbd --fork, nbdkit without -f, sshfs without -f) would leave the
child that carries the signal and run on: helpers run in the foreground.
"""
from __future__ import annotations

import os
import queue
import subprocess
import threading
from concurrent.futures import Future
from typing import Any

DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


class _Forker:
    """The long-lived thread every dying-with-its-owner helper is forked from."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[subprocess.Popen[Any]]]] = \
            queue.SimpleQueue()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, argv: list[str], kwargs: dict[str, Any]) -> subprocess.Popen[Any]:
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="cairn-helper-forker", daemon=True)
                self._thread.start()
        done: Future[subprocess.Popen[Any]] = Future()
        self._requests.put((argv, kwargs, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            argv, kwargs, done = self._requests.get()
            try:
                done.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as e:   # handed to the caller, whose error it is
                done.set_exception(e)

    def forget_thread(self) -> None:
        """In a child forked from this process: the forking thread stayed behind (a fork copies
        only the thread that forks), so the child's first helper starts one of its own."""
        self._requests = queue.SimpleQueue()
        self._started = threading.Lock()
        self._thread = None


_forker = _Forker()
os.register_at_fork(after_in_child=_forker.forget_thread)


def start_helper(argv: list[str], *, outlives_owner: bool = False, **popen: Any) -> subprocess.Popen[Any]:
    """Popen(argv, **popen) for a helper. One that `outlives_owner` (a VM reads from it) gets
    no parent-death signal and a session of its own, like a daemon: closing the terminal
    that started it does not end it either."""
    if outlives_owner:
        return subprocess.Popen(argv, start_new_session=True, **popen)
    return _forker.popen([*DIE_WITH_PARENT, *argv], {"process_group": 0, **popen})
