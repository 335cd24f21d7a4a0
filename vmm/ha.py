"""High availability: restart a VM whose QEMU died, on its host or on another one, unless it
keeps dying, and never while it may still run.

Each round the supervisor asks where every HA VM stands (HAHooks.survey, one question per
host), and acts on the answer (Health):

  RUNNING    its QEMU runs (or is paused) on its host: nothing to do.
  STOPPED    stopped on purpose, or by its guest (QemuDriver tells a crash from a stop, so a
             VM someone shuts down stays down).
  CRASHED    its host answered and the QEMU is gone while meant to run (SIGKILL, segfault, OOM
             killer): that answer is the proof it no longer runs, and it is restarted.
  HOST_DOWN  its host does not answer, so whether its QEMU runs is unknown. Once the host has
             been silent for `down_after` seconds (a network hiccup must not move VMs), the
             VM is fenced (HAHooks.fence, vmm/fencing.py) and only then restarted on another
             host. Without a proof it waits, reported once, and is tried again every round.

A VM restarted more than `max_restarts` times within `window_seconds` is flapping: restarting
it again would only repeat the crash, so the supervisor gives up on it and reports that once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum

from .errors import VMBusyError, VMError
from .fencing import Fenced, FenceProof

log = logging.getLogger("cairn.ha")

# Seconds a host must stay silent before its VMs are fenced and restarted elsewhere.
DOWN_AFTER = 10.0


class Health(Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    CRASHED = "crashed"
    HOST_DOWN = "host-down"


@dataclass(frozen=True)
class VMHealth:
    state: Health
    host: str     # where the VM runs, or last ran


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

    watched: Callable[[], Mapping[str, RestartLimit]]       # VMs with HA on, and their limits
    survey: Callable[[Collection[str]], Awaitable[Mapping[str, VMHealth]]]   # where they stand
    fence: Callable[[str, str], Awaitable[Fenced]]          # VM, its silent host: the proof, or a VMError
    restart: Callable[[str, Collection[str]], Awaitable[object]]   # start it, on none of these hosts
    restarted: Callable[[str, int, Fenced], None]           # VM, restarts in the window, the proof
    waiting: Callable[[str, str], None]                     # VM, why it cannot be restarted yet
    gave_up: Callable[[str, str], None]                     # VM, why


class HASupervisor:
    """A daemon thread running check() every `interval` seconds until stop()."""

    def __init__(self, hooks: HAHooks, interval: float = 1.0, down_after: float = DOWN_AFTER,
                 clock: Callable[[], float] = time.monotonic):
        self.hooks = hooks
        self.interval = interval
        self.down_after = down_after
        self.guard = FlapGuard(clock)
        self._clock = clock
        self._silent_since: dict[str, float] = {}   # host -> when it was first found silent
        self._waiting: set[str] = set()             # VMs whose wait was reported
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
        """One round: restart every HA VM that is proven down and has restarts left."""
        watched = self.hooks.watched()
        health = await self.hooks.survey(list(watched)) if watched else {}
        silent = {h.host for h in health.values() if h.state is Health.HOST_DOWN}
        now = self._clock()
        self._silent_since = {host: self._silent_since.get(host, now) for host in silent}
        for name, limit in watched.items():
            vm = health.get(name)
            if vm is None or vm.state in (Health.RUNNING, Health.STOPPED):
                self._waiting.discard(name)
                continue
            if vm.state is Health.HOST_DOWN and now - self._silent_since[vm.host] < self.down_after:
                continue
            fenced = await self._fence(name, vm)
            if fenced is not None:
                await self._restart(name, limit, fenced)

    async def _fence(self, name: str, vm: VMHealth) -> Fenced | None:
        if vm.state is Health.CRASHED:
            return Fenced(name, vm.host, FenceProof.QEMU_GONE)
        try:
            return await self.hooks.fence(name, vm.host)
        except VMError as err:
            if name not in self._waiting:
                self._waiting.add(name)
                self.hooks.waiting(name, str(err))
            return None

    async def _restart(self, name: str, limit: RestartLimit, fenced: Fenced) -> None:
        count = self.guard.admit(name, limit)
        if count is None:
            self.guard.forget(name)
            self.hooks.gave_up(name, f"crashed more than {limit.max_restarts} times within "
                                     f"{limit.window_seconds:g} s; not restarting it again")
            return
        # A VM whose host went silent restarts elsewhere: that host is fenced, not back.
        avoid = (fenced.host,) if fenced.proof is FenceProof.LOCKS_FREE else ()
        try:
            await self.hooks.restart(name, avoid)
        except VMBusyError:
            return  # someone is starting or stopping it right now: look again next round
        except Exception as err:
            self.guard.forget(name)
            self.hooks.gave_up(name, f"restart failed: {err}")
            return
        self._waiting.discard(name)
        self.hooks.restarted(name, count, fenced)

    def _run(self) -> None:
        async def loop() -> None:
            while not self._stop.is_set():
                try:
                    await self.check()
                except Exception:  # one bad round must not end supervision
                    log.exception("HA check failed")
                await asyncio.sleep(self.interval)
        asyncio.run(loop())
