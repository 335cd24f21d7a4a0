"""What `cairn serve` runs beside the API, for as long as it serves.

On every node:
  - its registration as the node's `cairn serve` (one per node; one in all on SQLite) and the
    node's heartbeat (jobs/nodes.py);
  - the recovery of the jobs whose runner died on this node: at start, then every SWEEP seconds;
  - on PostgreSQL, the event relay, so the event stream of this node's API carries what every
    node publishes (jobs/events.py);
  - its part in the election of the leader (leadership.py).
On the leader only, from when it gains the lease to when it loses it:
  - the scheduler (policies/scheduler.py), fenced by the leader's term;
  - the HA supervisor (vmm/ha.py, through VMService);
  - the recovery of every dead runner's jobs, other nodes' included (the same sweep);
  - the notifications loop (notifications/notifier.py).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.exc import SQLAlchemyError

from appliance.jobs.events import EventRelay
from appliance.jobs.nodes import Term
from appliance.notifications.notifier import Notifier
from appliance.policies.scheduler import Scheduler

from .leadership import Leadership, Role

if TYPE_CHECKING:
    from appliance.context import Appliance

log = logging.getLogger("cairn.server")
SWEEP = 2.0   # seconds between looks for jobs whose runner died


class Every:
    """`action()` every `interval` seconds from a thread of its own, the first time at once;
    a catalog that does not answer is logged and tried again at the next turn."""

    def __init__(self, name: str, interval: float, action: Callable[[], object]):
        self.action = action
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            try:
                self.action()
            except SQLAlchemyError as e:
                log.warning("%s: the catalog did not answer (%s); trying again", self._thread.name, e)
            if self._stop.wait(self.interval):
                return


class NodeServices:
    """This node's services, and the leader's while it leads (see the module)."""

    def __init__(self, appliance: Appliance, address: str):
        self.appliance = appliance
        self.address = address
        self.leadership = Leadership(appliance.jobs.nodes, self._lead, self._follow)
        self._running = ExitStack()
        self._leading = ExitStack()

    def start(self) -> None:
        jobs = self.appliance.jobs
        jobs.nodes.register_serve(self.address)
        try:
            self._running.enter_context(jobs.nodes.beating())
            jobs.recover(other_nodes=False)
            if jobs.events.relays:
                self._started(EventRelay(jobs.events), self._running)
            self._started(Every("cairn-recovery", SWEEP, self._recover), self._running)
            self.leadership.start()
            self._running.callback(self.leadership.stop)
        except BaseException:
            self._running.close()
            raise

    def stop(self) -> None:
        self._running.close()

    def _recover(self) -> None:
        recovered = self.appliance.jobs.recover(other_nodes=self.leadership.role == Role.LEADER)
        if recovered:
            log.info("took over the jobs of runners that died: %s", ", ".join(recovered))

    def _lead(self, term: Term) -> None:
        """The leader's services, started in this order and stopped in the reverse one; one that
        cannot start is logged, and the others run."""
        app = self.appliance
        services: dict[str, Callable[[], Startable]] = {
            "scheduler": lambda: Scheduler.for_appliance(app, term=term),
            "HA supervisor": app.vms.ha_supervisor,
            "notifications loop": lambda: Notifier.for_appliance(app),
        }
        for name, make in services.items():
            try:
                self._started(make(), self._leading)
            except Exception:
                log.exception("node %s leads without its %s, which could not start", term.node, name)

    def _follow(self) -> None:
        self._leading.close()

    @staticmethod
    def _started(service: Startable, stack: ExitStack) -> None:
        service.start()
        stack.callback(service.stop)


class Startable(Protocol):
    """What the services above are: started once, stopped once."""

    def start(self) -> None: ...

    def stop(self) -> None: ...
