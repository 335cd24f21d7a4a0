"""Time-based one-time passwords (RFC 6238) for two-factor login, via pyotp.

A code is accepted for the current 30 s step or one step either side (clock drift), and never
for a step at or before the last one accepted, so a code seen once cannot be replayed."""
from __future__ import annotations

import hmac
import re
from datetime import datetime

import pyotp

ISSUER = "Cairn"
DRIFT_STEPS = 1


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, account: str) -> str:
    """The otpauth:// URI an authenticator app reads (usually from a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=ISSUER)


def accepted_step(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step `code` is valid for, or None if it is wrong, stale or already used."""
    code = code.strip()
    if not re.fullmatch(r"[0-9]{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if (last_step is None or step > last_step) and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None

