"""Walking every committed backup's indexes: the read side of GC, verify and stats.

Indexes are yielded one at a time, so a store-wide pass holds one index in
memory, not all of them. A manifest or index that cannot be read is yielded
as an UnreadableBackup instead of stopping the walk: verify reports it, stats
counts it, and GC refuses to sweep (it could not know what that backup needs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import IndexCorruptError, ManifestCorruptError
from .index import FixedIndex
from .manifest import MANIFEST_FILE, BackupManifest
from .store import Store


@dataclass(frozen=True)
class DiskIndex:
    manifest: BackupManifest
    disk: str
    index: FixedIndex


@dataclass(frozen=True)
class UnreadableBackup:
    vm: str
    backup_id: str
    disk: str | None  # None when the manifest itself is unreadable
    error: str


# progress(manifests done, manifests in the store)
WalkProgress = Callable[[int, int], None]


def walk_indexes(store: Store, progress: WalkProgress | None = None) -> Iterator[DiskIndex | UnreadableBackup]:
    backups = store.committed()
    for done, backup in enumerate(backups, 1):
        try:
            manifest = store.load_manifest(backup)
        except FileNotFoundError:
            continue  # pruned since we listed it
        except (ManifestCorruptError, OSError) as e:
            yield UnreadableBackup(backup.vm, backup.backup_id, None, str(e))
            continue
        for disk in manifest.disks:
            try:
                yield DiskIndex(manifest, disk.name, store.read_index(manifest, disk.name))
            except (IndexCorruptError, OSError) as e:
                # Prune removes the manifest before the indexes: no manifest, no damage.
                if store.backend.stat(backup.file(MANIFEST_FILE)) is not None:
                    yield UnreadableBackup(manifest.vm, manifest.backup_id, disk.name, str(e))
        if progress:
            progress(done, len(backups))
