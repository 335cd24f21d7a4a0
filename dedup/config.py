"""The store's config.json: what makes a directory a Cairn store, and which format it has.

Format 2 (config version 3), what Cairn creates:

    {"format": "cairn-store", "version": 3,
     "block_size": 1048576, "pack_size": 67108864,
     "compression": {"algorithm": "zstd", "level": 3},
     "id": "<uuid4>", "created": "2026-11-21T07:30:12.123456Z"}

plus, in an encrypted store,
    "encryption": {"cipher": "aes-256-gcm", "chunk_id": "blake3-keyed",
                   "key_fingerprint": "<32 hex>"}

Format 1, which Cairn still reads (and `cairn store upgrade` turns into format 2), is
version 1 (plain) or 2 (encrypted, same "encryption" member) with "chunk_size" instead of
block and pack sizes.

block_size is fixed when the store is created: a full read cuts every disk at the same
block boundaries, which is what lets identical regions of different backups and VMs
deduplicate. pack_size is the size a pack grows to before it is closed; changing it would
only change new packs, so it is fixed too. The compression level matters only to writers.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from .backend import Backend, write_file
from .crypto import CIPHER
from .errors import NotAStoreError, StoreConfigError
from .manifest import format_time

CONFIG_FILE = "config.json"
STORE_FORMAT = "cairn-store"
FORMAT1_PLAIN_VERSION = 1
FORMAT1_ENCRYPTED_VERSION = 2
FORMAT2_VERSION = 3
KEYED_CHUNK_ID = "blake3-keyed"
MIN_ZSTD_LEVEL = 1
MAX_ZSTD_LEVEL = 22
# Format 1's chunks.
MIN_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 64 << 20
# Format 2: blocks are cut at these sizes (power of two); packs close once they reach pack_size.
MIN_BLOCK_SIZE = 16 << 10
MAX_BLOCK_SIZE = 16 << 20
MIN_PACK_SIZE = 256 << 10
# Offsets inside a pack are u32 in the block index; a pack may pass pack_size by one block.
MAX_PACK_SIZE = 1 << 30

StoreFormat = Literal[1, 2]


@dataclass(frozen=True)
class StoreConfig:
    layout: StoreFormat  # 1: chunk files, 2: packs of blocks
    zstd_level: int
    id: str
    created: datetime
    block_size: int = 0  # format 2
    pack_size: int = 0  # format 2
    chunk_size: int = 0  # format 1
    key_fingerprint: str | None = None  # set when the store is encrypted

    @property
    def encrypted(self) -> bool:
        return self.key_fingerprint is not None

    @classmethod
    def new(cls, block_size: int, pack_size: int, zstd_level: int, key_fingerprint: str | None = None) -> StoreConfig:
        config = cls(2, zstd_level, str(uuid.uuid4()), datetime.now(UTC), block_size=block_size,
                     pack_size=pack_size, key_fingerprint=key_fingerprint)
        config.check()
        return config

    def upgraded(self, block_size: int, pack_size: int) -> StoreConfig:
        """This format-1 store's config as format 2: same id, key and level."""
        config = replace(self, layout=2, block_size=block_size, pack_size=pack_size, chunk_size=0)
        config.check()
        return config

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"format": STORE_FORMAT}
        if self.layout == 2:
            doc |= {"version": FORMAT2_VERSION, "block_size": self.block_size, "pack_size": self.pack_size}
        else:
            doc |= {"version": FORMAT1_ENCRYPTED_VERSION if self.encrypted else FORMAT1_PLAIN_VERSION,
                    "chunk_size": self.chunk_size}
        doc |= {"compression": {"algorithm": "zstd", "level": self.zstd_level}, "id": self.id,
                "created": format_time(self.created)}
        if self.encrypted:
            doc["encryption"] = {"cipher": CIPHER, "chunk_id": KEYED_CHUNK_ID, "key_fingerprint": self.key_fingerprint}
        return json.dumps(doc, indent=2).encode() + b"\n"

    def save(self, backend: Backend) -> None:
        write_file(backend, CONFIG_FILE, self.to_json())

    @classmethod
    def load(cls, backend: Backend) -> StoreConfig:
        where = backend.location
        try:
            doc = json.loads(backend.read(CONFIG_FILE))
        except FileNotFoundError:
            raise NotAStoreError(f"{where} is not a Cairn store: it has no {CONFIG_FILE}") from None
        except (OSError, ValueError) as e:
            raise NotAStoreError(f"{where} is not a Cairn store: cannot read {CONFIG_FILE}: {e}") from e
        try:
            config = cls._from_doc(doc)
        except (KeyError, TypeError, ValueError) as e:
            raise NotAStoreError(f"{where} is not a Cairn store: invalid {CONFIG_FILE}: {e}") from e
        config.check()
        return config

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> StoreConfig:
        if doc["format"] != STORE_FORMAT:
            raise ValueError(f"format is {doc['format']!r}, expected {STORE_FORMAT!r}")
        version = doc["version"]
        if version not in (FORMAT1_PLAIN_VERSION, FORMAT1_ENCRYPTED_VERSION, FORMAT2_VERSION):
            raise ValueError(f"store version {version!r} is not supported (this Cairn reads versions "
                             f"{FORMAT1_PLAIN_VERSION} to {FORMAT2_VERSION})")
        compression = doc["compression"]
        if compression["algorithm"] != "zstd":
            raise ValueError(f"compression algorithm {compression['algorithm']!r} is not supported")
        fingerprint = None
        if version == FORMAT1_ENCRYPTED_VERSION or (version == FORMAT2_VERSION and "encryption" in doc):
            encryption = doc["encryption"]
            if (encryption["cipher"], encryption["chunk_id"]) != (CIPHER, KEYED_CHUNK_ID):
                raise ValueError(f"encryption {encryption['cipher']!r}/{encryption['chunk_id']!r} is not supported")
            fingerprint = str(encryption["key_fingerprint"])
        common = {"zstd_level": compression["level"], "id": str(uuid.UUID(doc["id"])),
                  "created": datetime.fromisoformat(doc["created"]), "key_fingerprint": fingerprint}
        if version == FORMAT2_VERSION:
            return cls(2, block_size=doc["block_size"], pack_size=doc["pack_size"], **common)
        return cls(1, chunk_size=doc["chunk_size"], **common)

    def check(self) -> None:
        if self.layout == 2:
            _power_of_two("block size", self.block_size, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)
            if not isinstance(self.pack_size, int) or not MIN_PACK_SIZE <= self.pack_size <= MAX_PACK_SIZE:
                raise StoreConfigError(
                    f"pack size {self.pack_size!r} must be from {MIN_PACK_SIZE} to {MAX_PACK_SIZE} bytes")
            if self.pack_size < self.block_size:
                raise StoreConfigError(f"pack size {self.pack_size} is smaller than the block size {self.block_size}")
        else:
            _power_of_two("chunk size", self.chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        if not isinstance(self.zstd_level, int) or not MIN_ZSTD_LEVEL <= self.zstd_level <= MAX_ZSTD_LEVEL:
            raise StoreConfigError(f"zstd level {self.zstd_level!r} must be from {MIN_ZSTD_LEVEL} to {MAX_ZSTD_LEVEL}")


def _power_of_two(what: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or value & (value - 1) or not low <= value <= high:
        raise StoreConfigError(f"{what} {value!r} must be a power of two from {low} to {high} bytes")
