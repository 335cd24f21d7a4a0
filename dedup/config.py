"""The store's config.json: what makes a directory a Cairn store.

    {"format": "cairn-store", "version": 1, "chunk_size": 67108864,
     "compression": {"algorithm": "zstd", "level": 3},
     "id": "<uuid4>", "created": "2026-11-21T07:30:12.123456Z"}

An encrypted store has version 2 and one more member,
    "encryption": {"cipher": "aes-256-gcm", "chunk_id": "blake3-keyed",
                   "key_fingerprint": "<32 hex>"}
so a Cairn that cannot decrypt refuses the store instead of misreading it,
while unencrypted stores stay readable by version-1 readers.

chunk_size and the compression level are fixed when the store is created:
every index in the store uses the same chunk size, which is what lets
identical disk regions of different backups and VMs deduplicate.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .backend import Backend, write_file
from .crypto import CIPHER
from .errors import NotAStoreError, StoreConfigError
from .manifest import format_time

CONFIG_FILE = "config.json"
STORE_FORMAT = "cairn-store"
PLAIN_VERSION = 1
ENCRYPTED_VERSION = 2
KEYED_CHUNK_ID = "blake3-keyed"
MIN_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20
MIN_ZSTD_LEVEL = 1
MAX_ZSTD_LEVEL = 22


@dataclass(frozen=True)
class StoreConfig:
    chunk_size: int
    zstd_level: int
    id: str
    created: datetime
    key_fingerprint: str | None = None  # set when the store is encrypted

    @property
    def encrypted(self) -> bool:
        return self.key_fingerprint is not None

    @classmethod
    def new(cls, chunk_size: int, zstd_level: int, key_fingerprint: str | None = None) -> "StoreConfig":
        check_settings(chunk_size, zstd_level)
        return cls(chunk_size, zstd_level, str(uuid.uuid4()), datetime.now(UTC), key_fingerprint)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "format": STORE_FORMAT,
            "version": ENCRYPTED_VERSION if self.encrypted else PLAIN_VERSION,
            "chunk_size": self.chunk_size,
            "compression": {"algorithm": "zstd", "level": self.zstd_level},
            "id": self.id,
            "created": format_time(self.created),
        }
        if self.encrypted:
            doc["encryption"] = {"cipher": CIPHER, "chunk_id": KEYED_CHUNK_ID, "key_fingerprint": self.key_fingerprint}
        return json.dumps(doc, indent=2).encode() + b"\n"

    def save(self, backend: Backend) -> None:
        write_file(backend, CONFIG_FILE, self.to_json())

    @classmethod
    def load(cls, backend: Backend) -> "StoreConfig":
        where = backend.location
        try:
            doc = json.loads(backend.read(CONFIG_FILE))
        except FileNotFoundError:
            raise NotAStoreError(f"{where} is not a Cairn store: it has no {CONFIG_FILE}") from None
        except (OSError, ValueError) as e:
            raise NotAStoreError(f"{where} is not a Cairn store: cannot read {CONFIG_FILE}: {e}") from e
        try:
            return cls._from_doc(doc)
        except (KeyError, TypeError, ValueError) as e:
            raise NotAStoreError(f"{where} is not a Cairn store: invalid {CONFIG_FILE}: {e}") from e

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> "StoreConfig":
        if doc["format"] != STORE_FORMAT:
            raise ValueError(f"format is {doc['format']!r}, expected {STORE_FORMAT!r}")
        if doc["version"] not in (PLAIN_VERSION, ENCRYPTED_VERSION):
            raise ValueError(
                f"store version {doc['version']!r} is not supported (this Cairn reads {PLAIN_VERSION} and "
                f"{ENCRYPTED_VERSION})"
            )
        compression = doc["compression"]
        if compression["algorithm"] != "zstd":
            raise ValueError(f"compression algorithm {compression['algorithm']!r} is not supported")
        fingerprint = None
        if doc["version"] == ENCRYPTED_VERSION:
            encryption = doc["encryption"]
            if (encryption["cipher"], encryption["chunk_id"]) != (CIPHER, KEYED_CHUNK_ID):
                raise ValueError(f"encryption {encryption['cipher']!r}/{encryption['chunk_id']!r} is not supported")
            fingerprint = str(encryption["key_fingerprint"])
        config = cls(
            chunk_size=doc["chunk_size"],
            zstd_level=compression["level"],
            id=str(uuid.UUID(doc["id"])),
            created=datetime.fromisoformat(doc["created"]),
            key_fingerprint=fingerprint,
        )
        check_settings(config.chunk_size, config.zstd_level)
        return config


def check_settings(chunk_size: int, zstd_level: int) -> None:
    if (
        not isinstance(chunk_size, int)
        or chunk_size & (chunk_size - 1)
        or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
    ):
        raise StoreConfigError(
            f"chunk size {chunk_size!r} must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
        )
    if not isinstance(zstd_level, int) or not MIN_ZSTD_LEVEL <= zstd_level <= MAX_ZSTD_LEVEL:
        raise StoreConfigError(f"zstd level {zstd_level!r} must be from {MIN_ZSTD_LEVEL} to {MAX_ZSTD_LEVEL}")
