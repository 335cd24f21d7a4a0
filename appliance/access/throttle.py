"""Slowing password guessing: after a few failed sign-ins for one user from one address, that pair
waits a while. Kept in memory: one API process signs people in, and a restart forgetting is fine.

Keyed by (user, address), so a stranger failing on purpose cannot lock the real admin out."""
from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from appliance.catalog.base import utcnow
from appliance.errors import CairnError

MAX_FAILURES = 5
WINDOW = timedelta(minutes=5)


class TooManyAttemptsError(CairnError):
    status = 429


class LoginThrottle:
    def __init__(self, clock: Callable[[], datetime] = utcnow) -> None:
        self.clock = clock
        self._failures: dict[tuple[str, str], list[datetime]] = {}
        self._lock = threading.Lock()

    def check(self, name: str, client: str) -> None:
        """Refuse if this pair failed MAX_FAILURES times in the last WINDOW."""
        with self._lock:
            recent = self._recent((name, client))
        if len(recent) >= MAX_FAILURES:
            wait = int((recent[0] + WINDOW - self.clock()).total_seconds()) + 1
            raise TooManyAttemptsError(f"too many failed sign-ins for {name} from {client}: try again in {wait} s")

    def failed(self, name: str, client: str) -> None:
        with self._lock:
            self._failures[(name, client)] = [*self._recent((name, client)), self.clock()]

    def succeeded(self, name: str, client: str) -> None:
        with self._lock:
            self._failures.pop((name, client), None)

    def _recent(self, key: tuple[str, str]) -> list[datetime]:
        since = self.clock() - WINDOW
        return [t for t in self._failures.get(key, ()) if t > since]
