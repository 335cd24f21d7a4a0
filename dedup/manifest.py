"""manifest.json: the record of one committed backup.

The manifest is written last and atomically, so a backup exists if and only
if its manifest does. It names each disk's index file together with the
BLAKE3 digest of that file, which makes the manifest the single root of
trust for everything the backup references.
"""

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .errors import DiskNotFoundError, ManifestCorruptError

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
BackupKind = Literal["full", "incremental"]
BACKUP_KINDS = ("full", "incremental")


@dataclass
class DiskStats:
    """How each chunk of a disk was obtained; the chunks_* add up to chunks_total.

    chunks_reused counts chunks taken from the parent's index, including
    all-zero ones; chunks_zero counts only chunks found or declared zero in
    this backup.
    """

    bytes_read: int = 0
    chunks_total: int = 0
    chunks_written: int = 0
    chunks_deduplicated: int = 0
    chunks_reused: int = 0
    chunks_zero: int = 0
    bytes_stored: int = 0


@dataclass(frozen=True)
class DiskEntry:
    name: str
    size: int
    chunk_size: int
    index: str
    index_digest: str
    stats: DiskStats = field(default_factory=DiskStats)


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

    def disk(self, name: str) -> DiskEntry:
        for entry in self.disks:
            if entry.name == name:
                return entry
        names = ", ".join(d.name for d in self.disks) or "none"
        raise DiskNotFoundError(f"backup {self.backup_id} has no disk {name!r} (disks: {names})")

    def to_json(self) -> bytes:
        doc = {
            "format_version": FORMAT_VERSION,
            "backup_id": self.backup_id,
            "vm": self.vm,
            "created": format_time(self.created),
            "kind": self.kind,
            "parent": self.parent,
            "checkpoint": self.checkpoint,
            "vm_definition": self.vm_definition,
            "disks": [asdict(disk) for disk in self.disks],
            "notes": list(self.notes),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: str) -> "BackupManifest":
        """Parse a manifest; `source` names it in error messages."""
        try:
            doc = json.loads(data)
            if doc["format_version"] != FORMAT_VERSION:
                raise ValueError(f"unsupported format_version {doc['format_version']!r}")
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
                disks=tuple(DiskEntry(**{**disk, "stats": DiskStats(**disk["stats"])}) for disk in doc["disks"]),
                notes=tuple(doc["notes"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestCorruptError(f"manifest {source} is invalid: {type(e).__name__}: {e}") from e


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix, e.g. 2026-11-21T07:30:12.123456Z."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
