"""Password hashing with scrypt (hashlib): memory-hard, in the standard library.

A hash records its own parameters, so raising them later keeps old hashes verifiable."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# 2^15 x 8 x 128 bytes = 32 MiB and ~0.1 s per hash on this class of machine.
_N, _R, _P = 2**15, 8, 1
_SCHEME = "scrypt"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * n * r)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return "$".join([_SCHEME, str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def unusable_hash() -> str:
    """A hash that no password matches (its digest is random) and that costs as long to check as a
    real one (the same parameters), made without computing a hash."""
    return "$".join([_SCHEME, str(_N), str(_R), str(_P), _b64(secrets.token_bytes(16)), _b64(secrets.token_bytes(32))])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = _unb64(digest)
        computed = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:  # not one of our hashes (binascii.Error is a ValueError too)
        return False
    return hmac.compare_digest(computed, expected)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
