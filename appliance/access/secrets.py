"""Secrets at rest (SSH keys, store passphrases, TOTP seeds): sealed with a key kept in the data dir.

Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) so a sealed value is tamper-evident;
the catalog only ever holds the sealed text."""
from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from appliance.errors import CairnError


class SecretError(CairnError):
    status = 500


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def open(cls, key_file: Path) -> SecretBox:
        """The box whose key is in `key_file`, creating the key (mode 0600) on first use."""
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
                f.flush()
                os.fsync(f.fileno())
        try:
            return cls(key_file.read_bytes().strip())
        except ValueError as e:
            raise SecretError(f"{key_file} does not hold a valid secret key: {e}") from e

    def seal(self, secret: str | bytes) -> str:
        return self._fernet.encrypt(secret.encode() if isinstance(secret, str) else secret).decode("ascii")

    def unseal(self, sealed: str) -> bytes:
        try:
            return self._fernet.decrypt(sealed.encode("ascii"))
        except (InvalidToken, ValueError) as e:
            raise SecretError("a sealed secret does not open with this data dir's key "
                              "(secret.key replaced, or the value was altered)") from e

    def unseal_text(self, sealed: str) -> str:
        return self.unseal(sealed).decode()
