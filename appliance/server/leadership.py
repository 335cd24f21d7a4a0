"""Leadership: this `cairn serve`'s part in electing the one that runs the scheduler, HA and the
recovery of dead nodes' jobs.

Every HEARTBEAT seconds it asks the catalog to lead (jobs/nodes.py: a lease row, and why a
lease rather than an advisory lock): a leader's ask renews its lease, a follower's takes the
lease once it ran out. When this process becomes the leader it starts the leader's services
(`gained(term)`), and stops them (`lost()`) when an ask says another leads, or when it could
not renew for LEASE less STEP_DOWN_EARLY seconds (the catalog is away, or this host cut off
from it): by then another node may be about to take over, and two schedulers must not run.
The term's fencing (Term.confirm) refuses what a leader slower than that still writes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import Enum

from sqlalchemy.exc import SQLAlchemyError

from appliance.jobs.nodes import HEARTBEAT, Nodes, Term

log = logging.getLogger("cairn.leadership")
STEP_DOWN_EARLY = 1.0   # seconds before its lease may have run out that a leader cut off stops leading


class Role(Enum):
    FOLLOWER = "follower"
    LEADER = "leader"


class Leadership:
    """Asks to lead, from a thread, until stopped; calls `gained(term)` and `lost()` as the lease
    comes and goes (from that thread, one at a time)."""

    def __init__(self, nodes: Nodes, gained: Callable[[Term], None], lost: Callable[[], None]):
        self.nodes = nodes
        self.gained = gained
        self.lost = lost
        self.role = Role.FOLLOWER
        self.term: Term | None = None
        self._renewed = 0.0   # time.monotonic() when the last ask that renewed the lease was sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Ask once now (a node alone leads before its first request is served), then every HEARTBEAT."""
        self._ask()
        self._thread = threading.Thread(target=self._loop, name="cairn-leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop asking; a leader stops its services and hands its lease back, so a follower takes
        over at its next ask instead of after LEASE."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.term is not None:
            term = self.term
            self._change(None)
            try:
                self.nodes.resign(term)
            except SQLAlchemyError as e:
                log.warning("the lease of term %d was not handed back (%s): it runs out by itself", term.number, e)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            self._ask()

    def _ask(self) -> None:
        sent = time.monotonic()
        try:
            term = self.nodes.lead()
        except SQLAlchemyError as e:
            cut_off = time.monotonic() - self._renewed > self.nodes.lease.total_seconds() - STEP_DOWN_EARLY
            if self.term is not None and cut_off:
                log.error("node %s stops leading: its lease could not be renewed (%s)", self.nodes.name, e)
                self._change(None)
            elif self.term is not None:
                log.warning("node %s could not renew its lease yet (%s)", self.nodes.name, e)
            return
        if term is not None:
            self._renewed = sent
        if term != self.term:
            self._change(term)

    def _change(self, term: Term | None) -> None:
        if self.term is not None:
            log.info("node %s stops leading (term %d)", self.nodes.name, self.term.number)
            self.role, self.term = Role.FOLLOWER, None
            self.lost()
        if term is not None:
            log.info("node %s leads, in term %d", self.nodes.name, term.number)
            self.role, self.term = Role.LEADER, term
            self.gained(term)
