"""manifest.json: the record of one committed backup.

The manifest is written last and atomically, so a backup exists if and only if its manifest
does. It is the single root of trust for everything the backup references: in format 2 it
names each disk's map root (maps.py), whose pages name the blocks; in format 1 (read only)
each disk's index file with the BLAKE3 digest of that file. A manifest says its own
format_version, so a store being upgraded holds both kinds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .errors import DiskNotFoundError, ManifestCorruptError

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2
FORMAT1_VERSION = 1
BackupKind = Literal["full", "incremental"]
BACKUP_KINDS = ("full", "incremental")


@dataclass
class DiskStats:
    """How a format-2 backup got each byte of a disk.

    bytes_changed + bytes_inherited + holes = the disk's size: changed bytes were given by this
    backup (read, or declared zero), inherited ones are the parent's extents, not read.
    bytes_stored and metadata_stored count what this backup added to the store (record headers
    included); blocks found in the store already cost nothing.
    """

    bytes_read: int = 0
    bytes_changed: int = 0
    bytes_inherited: int = 0
    blocks_written: int = 0
    blocks_deduplicated: int = 0
    bytes_stored: int = 0
    pages_written: int = 0
    metadata_stored: int = 0


@dataclass
class ChunkStats:
    """Format 1's per-disk stats: how each chunk was obtained."""

    bytes_read: int = 0
    chunks_total: int = 0
    chunks_written: int = 0
    chunks_deduplicated: int = 0
    chunks_reused: int = 0
    chunks_zero: int = 0
    bytes_stored: int = 0


@dataclass(frozen=True)
class MapRoot:
    """Where a format-2 disk's extent map starts: the root page and the tree's shape."""

    root: str | None  # hex page id; None: the disk is all holes
    depth: int
    leaf_span: int
    fanout: int


@dataclass(frozen=True)
class ChunkIndexRef:
    """A format-1 disk: its fixed index file (legacy.py) and that file's BLAKE3."""

    chunk_size: int
    index: str
    index_digest: str


@dataclass(frozen=True)
class DiskEntry:
    name: str
    size: int
    layout: MapRoot | ChunkIndexRef
    stats: DiskStats | ChunkStats = field(default_factory=DiskStats)

    def to_doc(self) -> dict[str, Any]:
        if isinstance(self.layout, MapRoot):
            return {"name": self.name, "size": self.size, "map": asdict(self.layout), "stats": asdict(self.stats)}
        return {"name": self.name, "size": self.size, **asdict(self.layout), "stats": asdict(self.stats)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], format_version: int) -> DiskEntry:
        if format_version == FORMAT1_VERSION:
            layout: MapRoot | ChunkIndexRef = ChunkIndexRef(doc["chunk_size"], doc["index"], doc["index_digest"])
            return cls(doc["name"], doc["size"], layout, ChunkStats(**doc["stats"]))
        layout = MapRoot(**doc["map"])
        if layout.root is not None:
            bytes.fromhex(layout.root)
        return cls(doc["name"], doc["size"], layout, DiskStats(**doc["stats"]))


@dataclass(frozen=True)
class BackupManifest:
    backup_id: str
    vm: str
    created: datetime
    kind: BackupKind
    parent: str | None
    checkpoint: str | None
    vm_definition: dict[str, Any]
    disks: tuple[DiskEntry, ...]
    notes: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION

    def disk(self, name: str) -> DiskEntry:
        for entry in self.disks:
            if entry.name == name:
                return entry
        names = ", ".join(d.name for d in self.disks) or "none"
        raise DiskNotFoundError(f"backup {self.backup_id} has no disk {name!r} (disks: {names})")

    def to_json(self) -> bytes:
        doc = {
            "format_version": self.format_version,
            "backup_id": self.backup_id,
            "vm": self.vm,
            "created": format_time(self.created),
            "kind": self.kind,
            "parent": self.parent,
            "checkpoint": self.checkpoint,
            "vm_definition": self.vm_definition,
            "disks": [disk.to_doc() for disk in self.disks],
            "notes": list(self.notes),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: str) -> BackupManifest:
        """Parse a manifest; `source` names it in error messages."""
        try:
            doc = json.loads(data)
            version = doc["format_version"]
            if version not in (FORMAT1_VERSION, FORMAT_VERSION):
                raise ValueError(f"unsupported format_version {version!r}")
            if doc["kind"] not in BACKUP_KINDS:
                raise ValueError(f"unknown kind {doc['kind']!r}")
            created = datetime.fromisoformat(doc["created"])
            if created.tzinfo is None:
                raise ValueError(f"created {doc['created']!r} has no time zone")
            return cls(
                backup_id=doc["backup_id"],
                vm=doc["vm"],
                created=created,
                kind=doc["kind"],
                parent=doc["parent"],
                checkpoint=doc["checkpoint"],
                vm_definition=doc["vm_definition"],
                disks=tuple(DiskEntry.from_doc(disk, version) for disk in doc["disks"]),
                notes=tuple(doc["notes"]),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ManifestCorruptError(f"manifest {source} is invalid: {type(e).__name__}: {e}") from e


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix, e.g. 2026-11-21T07:30:12.123456Z."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
