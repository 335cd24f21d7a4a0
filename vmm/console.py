"""The VNC console of a VM: a unix socket in its run directory and a random password.

The socket is only reachable by local root (the run directory's permissions), and the password
is a second lock for anyone who is handed the socket through a proxy. VNC authentication uses
DES, which takes at most 8 password characters, so the password is exactly 8 random ones.
"""

from __future__ import annotations

import os
import secrets
import string
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .qmp import QMPSession
from .rundir import RunDir

Grant = TypeVar("Grant")
VNC_PASSWORD_LENGTH = 8
_ALPHABET = string.ascii_letters + string.digits


async def arm_vnc(qmp: QMPSession, rundir: RunDir) -> str:
    """Give the running VM's VNC server a new random password and keep it in the run dir."""
    password = "".join(secrets.choice(_ALPHABET) for _ in range(VNC_PASSWORD_LENGTH))
    await qmp.execute("set_password", {"protocol": "vnc", "password": password})
    fd = os.open(rundir.vnc_password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password)
    return password


def vnc_password(rundir: RunDir) -> str | None:
    try:
        return rundir.vnc_password_file.read_text().strip() or None
    except OSError:
        return None


class ConsoleTokens(Generic[Grant]):
    """One-time tokens for the console proxy: each opens one VM's console once, shortly. What a
    token grants is the issuer's to say: a VM's name, or the name with who asked for it.

    Kept in memory: a token is only good in the process (the appliance server) that issued it,
    and a restart simply invalidates them all.
    """

    def __init__(self, ttl_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._tokens: dict[str, tuple[Grant, float]] = {}
        self._lock = threading.Lock()

    def issue(self, vm: Grant) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock()
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (vm, now + self.ttl_seconds)
        return token

    def redeem(self, token: str) -> Grant | None:
        """What the token was issued for, or None if it is unknown, used or expired."""
        with self._lock:
            entry = self._tokens.pop(token, None)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]
