"""Walking what the committed backups reference: the read side of GC, verify and stats.

Backups are visited one at a time and, in format 2, a map page shared by several backups
(every leaf an incremental did not change is its parent's) is read once: the walk skips a
subtree whose root it has seen. A manifest or map that cannot be read is reported as an
UnreadableBackup instead of stopping the walk: verify reports it, stats counts it, and GC
refuses to remove anything (it could not know what that backup needs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import IndexCorruptError, ManifestCorruptError
from .manifest import MANIFEST_FILE, BackupManifest
from .store import BackupDir, DiskMap, Store, UnreadableBackup

# progress(manifests done, manifests in the store)
WalkProgress = Callable[[int, int], None]


@dataclass
class References:
    """Every block and page the readable backups reference, by id."""

    manifests: list[BackupManifest] = field(default_factory=list)
    pages: set[bytes] = field(default_factory=set)  # format-2 map pages
    blocks: set[bytes] = field(default_factory=set)  # format-2 blocks
    chunks: set[bytes] = field(default_factory=set)  # format-1 chunks (a store being upgraded)
    chunk_backups: set[str] = field(default_factory=set)  # format-1 backups among the manifests
    unreadable: list[UnreadableBackup] = field(default_factory=list)


def each_disk(store: Store, progress: WalkProgress | None = None,
              on_unreadable: Callable[[UnreadableBackup], None] | None = None
              ) -> list[tuple[BackupManifest, DiskMap]]:
    """(manifest, disk map) of every disk of every readable backup; unreadable ones go to on_unreadable."""
    disks = []
    backups = store.committed()
    for done, backup in enumerate(backups, 1):
        try:
            manifest = store.load_manifest(backup)
        except FileNotFoundError:
            continue  # pruned since we listed it
        except (ManifestCorruptError, OSError) as e:
            if on_unreadable:
                on_unreadable(UnreadableBackup(backup.vm, backup.backup_id, None, str(e)))
            continue
        for disk in manifest.disks:
            try:
                disks.append((manifest, store.disk_map(manifest, disk)))
            except (IndexCorruptError, OSError) as e:
                if on_unreadable and store.backend.stat(backup.file(MANIFEST_FILE)) is not None:
                    on_unreadable(UnreadableBackup(manifest.vm, manifest.backup_id, disk.name, str(e)))
        if progress:
            progress(done, len(backups))
    return disks


def collect_references(store: Store, progress: WalkProgress | None = None) -> References:
    refs = References()
    seen: set[str] = set()
    for manifest, disk in each_disk(store, progress, refs.unreadable.append):
        if manifest.backup_id not in seen:
            seen.add(manifest.backup_id)
            refs.manifests.append(manifest)
        try:
            mark_disk(disk, refs)
        except (IndexCorruptError, OSError) as e:
            # Prune removes the manifest before anything else: no manifest, no damage.
            if store.backend.stat(BackupDir(manifest.vm, manifest.backup_id).file(MANIFEST_FILE)) is not None:
                refs.unreadable.append(UnreadableBackup(manifest.vm, manifest.backup_id, disk.name, str(e)))
        if manifest.format_version == 1:
            refs.chunk_backups.add(manifest.backup_id)
    return refs


def mark_disk(disk: DiskMap, refs: References) -> None:
    """Add what one disk references to refs; pages already marked are not read again."""
    tree = disk.tree
    if tree is None:
        refs.chunks.update(entry.block_id for entry in disk.entries())
        return
    for page_id, level, start in tree.pages(skip=refs.pages):
        refs.pages.add(page_id)
        if level == 0:
            refs.blocks.update(tree.leaf(start // tree.shape.leaf_span, page_id).block_ids)
