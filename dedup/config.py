"""The store's config.json: what makes a directory a Cairn store.

    {"format": "cairn-store", "version": 1, "chunk_size": 67108864,
     "compression": {"algorithm": "zstd", "level": 3},
     "id": "<uuid4>", "created": "2026-11-21T07:30:12.123456Z"}

chunk_size and the compression level are fixed when the store is created:
every index in the store uses the same chunk size, which is what lets
identical disk regions of different backups and VMs deduplicate.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import NotAStoreError, StoreConfigError
from .fsutil import write_atomic
from .manifest import format_time

CONFIG_FILE = "config.json"
STORE_FORMAT = "cairn-store"
STORE_VERSION = 1
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

    @classmethod
    def new(cls, chunk_size: int, zstd_level: int) -> "StoreConfig":
        check_settings(chunk_size, zstd_level)
        return cls(chunk_size, zstd_level, str(uuid.uuid4()), datetime.now(UTC))

    def to_json(self) -> bytes:
        doc = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "chunk_size": self.chunk_size,
            "compression": {"algorithm": "zstd", "level": self.zstd_level},
            "id": self.id,
            "created": format_time(self.created),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    def save(self, store_path: Path) -> None:
        write_atomic(store_path / CONFIG_FILE, self.to_json())

    @classmethod
    def load(cls, store_path: Path) -> "StoreConfig":
        path = store_path / CONFIG_FILE
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotAStoreError(f"{store_path} is not a Cairn store: {path} does not exist") from None
        except (OSError, ValueError) as e:
            raise NotAStoreError(f"{store_path} is not a Cairn store: cannot read {path}: {e}") from e
        try:
            return cls._from_doc(doc)
        except (KeyError, TypeError, ValueError) as e:
            raise NotAStoreError(f"{store_path} is not a Cairn store: invalid {path}: {e}") from e

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> "StoreConfig":
        if doc["format"] != STORE_FORMAT:
            raise ValueError(f"format is {doc['format']!r}, expected {STORE_FORMAT!r}")
        if doc["version"] != STORE_VERSION:
            raise ValueError(f"store version {doc['version']!r} is not supported (this Cairn reads {STORE_VERSION})")
        compression = doc["compression"]
        if compression["algorithm"] != "zstd":
            raise ValueError(f"compression algorithm {compression['algorithm']!r} is not supported")
        config = cls(
            chunk_size=doc["chunk_size"],
            zstd_level=compression["level"],
            id=str(uuid.UUID(doc["id"])),
            created=datetime.fromisoformat(doc["created"]),
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
