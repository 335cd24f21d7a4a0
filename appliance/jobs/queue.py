"""Per-resource queues: a process's jobs on one resource run one after another, on that resource's worker.

A worker thread exists only while its resource has work here. Across processes, a job also
waits for its resource's claim in the catalog (claims.py) before it starts. `Capacity` caps
how many of this process's jobs run at once per key (host, store), as policies ask.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ResourceQueues:
    def __init__(self, run: Callable[[str], None]):
        self._run = run
        self._pending: dict[str, collections.deque[str]] = {}
        self._lock = threading.Lock()
        self._let_go = threading.Condition(self._lock)

    def submit(self, resource: str, job_id: str) -> None:
        with self._lock:
            if resource in self._pending:
                self._pending[resource].append(job_id)
                return
            self._pending[resource] = collections.deque([job_id])
        threading.Thread(target=self._work, args=(resource,), name=f"jobs-{resource}", daemon=True).start()

    def _work(self, resource: str) -> None:
        while True:
            with self._lock:
                pending = self._pending[resource]
                if not pending:
                    del self._pending[resource]
                    return
                job_id = pending[0]
            try:
                self._run(job_id)
            finally:
                with self._lock:
                    self._pending[resource].popleft()
                    self._let_go.notify_all()

    def settle(self, job_id: str, timeout: float) -> bool:
        """Wait until this process's worker has let go of the job: it is finished in the catalog a
        moment before its worker closes its event loop (which starts a thread to join the loop's
        executor), and a process that exits in that moment crashes in the interpreter's
        finalization. False if the worker still holds it after `timeout`."""
        with self._let_go:
            return self._let_go.wait_for(lambda: not any(job_id in q for q in self._pending.values()), timeout)


class Capacity:
    """Counts jobs running per key; a job waits until every key it names is below its limit."""

    def __init__(self) -> None:
        self._in_use: collections.Counter[str] = collections.Counter()
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, limits: dict[str, int], give_up: threading.Event) -> Iterator[bool]:
        """Yields True once the job may run, False if `give_up` was set while it waited."""
        with self._changed:
            while not all(self._in_use[key] < limit for key, limit in limits.items()):
                if give_up.is_set():
                    granted = False
                    break
                self._changed.wait(0.2)
            else:
                granted = True
                self._in_use.update(limits.keys())
        try:
            yield granted
        finally:
            if granted:
                with self._changed:
                    self._in_use.subtract(limits.keys())
                    self._changed.notify_all()
