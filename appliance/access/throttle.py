"""Slowing password guessing: a user name from one address gets MAX_FAILURES password checks per
WINDOW; past them it waits for the window to end (429). Keyed by (user, address), so a stranger
failing on purpose cannot lock the real admin out from elsewhere.

The count lives in the catalog and an attempt is counted *before* its password is checked, in
one conditional UPDATE (attempts < MAX_FAILURES): forty guesses arriving at once get five checks,
whichever API process or CLI they reach, on SQLite as on PostgreSQL. A successful sign-in clears
the count; a wrong one leaves its attempt counted.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import rows_changed, utcnow
from appliance.errors import CairnError

from .records import LoginAttemptRecord

MAX_FAILURES = 5
WINDOW = timedelta(minutes=5)
MAX_KEY = 64   # the user name and address columns' width: longer ones are cut (a name that long fails anyway)


class TooManyAttemptsError(CairnError):
    status = 429


class LoginThrottle:
    def __init__(self, catalog: sessionmaker[Session], clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.clock = clock

    def attempt(self, name: str, client: str) -> None:
        """Count one attempt of this pair, or refuse it (TooManyAttemptsError) if its window's
        attempts are used up. Call it before checking the password."""
        key = (name[:MAX_KEY], client[:MAX_KEY])
        now = self.clock()
        for _ in range(2):   # a second round only if a concurrent first attempt made the row
            try:
                with self.catalog.begin() as s:
                    if self._count(s, key, now):
                        return
                    row = s.get(LoginAttemptRecord, key)
                    if row is None:
                        # Windows that ended count for nothing: each new pair sweeps them, so
                        # guesses at ever new names cannot grow the table without bound.
                        s.execute(delete(LoginAttemptRecord).where(LoginAttemptRecord.window_start <= now - WINDOW))
                        s.add(LoginAttemptRecord(user_name=key[0], client=key[1], attempts=1, window_start=now))
                        return
                    wait = int((row.window_start + WINDOW - now).total_seconds()) + 1
                raise TooManyAttemptsError(f"too many failed sign-ins for {name} from {client}: try again in {wait} s")
            except IntegrityError:
                continue
        raise TooManyAttemptsError(f"too many sign-ins for {name} from {client} at once: try again")

    def succeeded(self, name: str, client: str) -> None:
        with self.catalog.begin() as s:
            if row := s.get(LoginAttemptRecord, (name[:MAX_KEY], client[:MAX_KEY])):
                s.delete(row)

    @staticmethod
    def _count(s: Session, key: tuple[str, str], now: datetime) -> bool:
        """Take one of the pair's attempts (a window that ended starts afresh); False if none is left."""
        this = (LoginAttemptRecord.user_name == key[0], LoginAttemptRecord.client == key[1])
        s.execute(update(LoginAttemptRecord).where(*this, LoginAttemptRecord.window_start <= now - WINDOW)
                  .values(attempts=0, window_start=now))
        taken = s.execute(update(LoginAttemptRecord).where(*this, LoginAttemptRecord.attempts < MAX_FAILURES)
                          .values(attempts=LoginAttemptRecord.attempts + 1))
        return rows_changed(taken) == 1
