"""High availability: restart a VM whose QEMU died, unless it keeps dying.

The supervisor polls QemuDriver.status() (cheap: a pidfile and /proc), which tells a crash
(QEMU gone while meant to run: SIGKILL, segfault, OOM killer) from a stop or a guest poweroff,
so a VM someone shuts down on purpose stays down. A VM that crashes more than `max_restarts`
times within `window_seconds` is flapping: restarting it again would only repeat the crash, so
the supervisor gives up on it and reports that once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .errors import VMBusyError
from .qemu import QemuDriver

log = logging.getLogger("cairn.ha")


@dataclass(frozen=True)
class RestartLimit:
    max_restarts: int = 3
    window_seconds: float = 600.0


class FlapGuard:
    """Remembers recent restarts per VM and says whether one more is allowed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._restarts: dict[str, deque[float]] = {}

    def admit(self, name: str, limit: RestartLimit) -> int | None:
        """Count one more restart and return how many the window now holds, or None if the
        limit is reached (and then count nothing)."""
        now = self._clock()
        recent = self._restarts.setdefault(name, deque())
        while recent and now - recent[0] > limit.window_seconds:
            recent.popleft()
        if len(recent) >= limit.max_restarts:
            return None
        recent.append(now)
        return len(recent)

    def forget(self, name: str) -> None:
        self._restarts.pop(name, None)


@dataclass(frozen=True)
class HAHooks:
    """What the supervisor needs from whoever owns the VMs."""

    watched: Callable[[], Mapping[str, RestartLimit]]     # VMs with HA on, and their limits
    restart: Callable[[str], Awaitable[object]]            # start the VM again
    restarted: Callable[[str, int], None]                  # VM, how many restarts in the window
    gave_up: Callable[[str, str], None]                    # VM, why


class HASupervisor:
    """A daemon thread running check() every `interval` seconds until stop()."""

    def __init__(self, driver: QemuDriver, hooks: HAHooks, interval: float = 1.0):
        self.driver = driver
        self.hooks = hooks
        self.interval = interval
        self.guard = FlapGuard()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cairn-ha", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    async def check(self) -> None:
        """One round: restart every crashed HA VM that has restarts left."""
        for name, limit in self.hooks.watched().items():
            if self.driver.status(name).state != "crashed":
                continue
            count = self.guard.admit(name, limit)
            if count is None:
                self.guard.forget(name)
                self.hooks.gave_up(name, f"crashed more than {limit.max_restarts} times within "
                                         f"{limit.window_seconds:g} s; not restarting it again")
                continue
            try:
                await self.hooks.restart(name)
            except VMBusyError:
                continue  # someone is starting or stopping it right now: look again next round
            except Exception as err:
                self.guard.forget(name)
                self.hooks.gave_up(name, f"restart failed: {err}")
                continue
            self.hooks.restarted(name, count)

    def _run(self) -> None:
        async def loop() -> None:
            while not self._stop.is_set():
                try:
                    await self.check()
                except Exception:  # one bad round must not end supervision
                    log.exception("HA check failed")
                await asyncio.sleep(self.interval)
        asyncio.run(loop())
