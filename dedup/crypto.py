"""Encryption of a store: one random key, kept in a key file sealed by a passphrase.

The store key is 64 random bytes: the first 32 are the AES-256-GCM data key,
the last 32 the BLAKE3 key that makes chunk ids keyed hashes, so an id says
nothing about content to someone without the key (no "do you have this
file" test by hashing it). The fingerprint, the first 16 bytes of BLAKE3 of
the whole key in hex, is recorded in the store's config: a key from another
store fails loudly there instead of as a flood of corrupt chunks.

Sealed data is nonce (12 random bytes) || AES-256-GCM ciphertext and tag,
with associated data naming what it is (a chunk's id, a file's store path),
so a sealed file moved to another name fails authentication.

The key file is JSON:
    {"format": "cairn-key", "version": 1,
     "kdf": {"algorithm": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<base64>"},
     "cipher": "aes-256-gcm", "sealed_key": "<base64 nonce || ciphertext || tag>"}
The scrypt output (32 bytes) is the AES-256-GCM key that seals the store key,
with associated data b"cairn-key".
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import KeyFileError, WrongPassphraseError

KEY_SIZE = 64
NONCE_SIZE = 12
TAG_SIZE = 16
CIPHER = "aes-256-gcm"
KEY_FILE_FORMAT = "cairn-key"
KEY_FILE_VERSION = 1
_KEY_FILE_AAD = b"cairn-key"
# scrypt with N=2^15, r=8 takes 32 MiB and about 0.1 s: cheap to unlock once, dear to guess.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1


class AeadFailed(Exception):
    """Sealed data did not authenticate: damaged, moved, or sealed with another key."""


@dataclass(frozen=True, repr=False)
class StoreKey:
    material: bytes

    @classmethod
    def generate(cls) -> StoreKey:
        return cls(os.urandom(KEY_SIZE))

    @property
    def fingerprint(self) -> str:
        return blake3.blake3(self.material).digest()[:16].hex()

    @property
    def id_key(self) -> bytes:
        return self.material[32:]

    def seal(self, data: bytes | bytearray | memoryview, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + AESGCM(self.material[:32]).encrypt(nonce, bytes(data), associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise AeadFailed(f"{len(sealed)} bytes is too short for sealed data")
        try:
            return AESGCM(self.material[:32]).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated)
        except InvalidTag:
            raise AeadFailed("authentication failed") from None


def seal_key_file(key: StoreKey, passphrase: str) -> bytes:
    if not passphrase:
        raise KeyFileError("the passphrase must not be empty")
    salt = os.urandom(16)
    wrapping = _scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE_SIZE)
    doc = {
        "format": KEY_FILE_FORMAT,
        "version": KEY_FILE_VERSION,
        "kdf": {"algorithm": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt)},
        "cipher": CIPHER,
        "sealed_key": _b64(nonce + AESGCM(wrapping).encrypt(nonce, key.material, _KEY_FILE_AAD)),
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def unlock_key_file(data: bytes, passphrase: str, source: str) -> StoreKey:
    """The store key in a key file; WrongPassphraseError if the passphrase does not open it."""
    try:
        doc = json.loads(data)
        if doc["format"] != KEY_FILE_FORMAT or doc["version"] != KEY_FILE_VERSION:
            raise ValueError(f"not a version {KEY_FILE_VERSION} {KEY_FILE_FORMAT} file")
        kdf = doc["kdf"]
        if kdf["algorithm"] != "scrypt" or doc["cipher"] != CIPHER:
            raise ValueError(f"unsupported kdf {kdf['algorithm']!r} or cipher {doc['cipher']!r}")
        salt = base64.b64decode(kdf["salt"], validate=True)
        sealed = base64.b64decode(doc["sealed_key"], validate=True)
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    except (KeyError, TypeError, ValueError) as e:
        raise KeyFileError(f"key file {source} is invalid: {e}") from e
    wrapping = _scrypt(passphrase, salt, n, r, p)
    try:
        material = AESGCM(wrapping).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _KEY_FILE_AAD)
    except (InvalidTag, ValueError):
        raise WrongPassphraseError(f"wrong passphrase for key file {source}") from None
    if len(material) != KEY_SIZE:
        raise KeyFileError(f"key file {source} holds a {len(material)}-byte key, expected {KEY_SIZE}")
    return StoreKey(material)


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
