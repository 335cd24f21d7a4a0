"""Store: the facade over a store directory.

    store/
      config.json                                 store settings (config.py)
      chunks/ab/cd/<blake3-hex>                   one zstd frame per chunk (chunks.py)
      backups/<vm>/<backup-id>/<disk>.index       fixed index per disk (index.py)
      backups/<vm>/<backup-id>/manifest.json      written last (manifest.py)
      backups/<vm>/<backup-id>/protected          never pruned (prune.py)
      writers/<backup-id>                         lease of a backup being written (leases.py)
      locks/gc                                    held by the running GC (gc.py)

Backup ids are unique across the whole store, so a backup can be found by
id alone. A backup directory without a manifest is a backup being written
or one whose writer died; readers ignore it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .chunks import ChunkStore
from .codec import ChunkCodec, content_digest
from .config import CONFIG_FILE, StoreConfig
from .errors import (
    BackupExistsError,
    BackupNotFoundError,
    BackupWriteError,
    IndexCorruptError,
    InvalidNameError,
    ManifestCorruptError,
    NotAStoreError,
    StoreExistsError,
    StoreNotEmptyError,
)
from .fsutil import mkdir_durable
from .index import FixedIndex
from .leases import WriterLease
from .locks import LOCKS_DIR, WRITERS_DIR
from .manifest import BACKUP_KINDS, MANIFEST_FILE, BackupKind, BackupManifest
from .names import check_name, new_backup_id
from .buffers import keep_chunk_buffers_warm
from .writer import BackupSession

DEFAULT_CHUNK_SIZE = 64 << 20
DEFAULT_ZSTD_LEVEL = 3
CHUNKS_DIR = "chunks"
BACKUPS_DIR = "backups"


class Store:
    def __init__(self, path: Path, config: StoreConfig) -> None:
        """Use Store.init or Store.open; this only wires the parts together."""
        keep_chunk_buffers_warm()
        self.path = path
        self.config = config
        self.chunks = ChunkStore(path / CHUNKS_DIR, ChunkCodec(config.zstd_level, config.chunk_size))
        self._backups = path / BACKUPS_DIR

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @classmethod
    def init(
        cls, path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE, zstd_level: int = DEFAULT_ZSTD_LEVEL
    ) -> Store:
        """Create a store in an empty or missing directory."""
        path = Path(path)
        config = StoreConfig.new(chunk_size, zstd_level)
        if (path / CONFIG_FILE).exists():
            raise StoreExistsError(f"{path} is already a Cairn store; open it instead of initialising it")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreNotEmptyError(f"cannot create a store in {path}: it is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        mkdir_durable(path / CHUNKS_DIR, exist_ok=True)
        mkdir_durable(path / BACKUPS_DIR, exist_ok=True)
        mkdir_durable(path / LOCKS_DIR, exist_ok=True)
        mkdir_durable(path / WRITERS_DIR, exist_ok=True)
        # Last, so that a store exists only once it is complete.
        config.save(path)
        return cls(path, config)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        path = Path(path)
        config = StoreConfig.load(path)
        for sub in (CHUNKS_DIR, BACKUPS_DIR):
            if not (path / sub).is_dir():
                raise NotAStoreError(f"{path} is not a complete Cairn store: {path / sub} is missing")
        return cls(path, config)

    def begin_backup(
        self,
        vm: str,
        backup_id: str | None = None,
        kind: BackupKind = "full",
        parent: BackupManifest | None = None,
        checkpoint: str | None = None,
        vm_definition: dict[str, Any] | None = None,
        *,
        workers: int | None = None,
        created: datetime | None = None,
    ) -> BackupSession:
        """Start writing a backup; its id is generated unless given.

        An incremental backup needs the parent it builds on, a full one has
        none. workers defaults to one per CPU. created, the moment the backup
        shows, defaults to now; set it when importing a backup taken earlier
        (retention rules go by it).
        """
        check_name("vm name", vm)
        if kind not in BACKUP_KINDS:
            raise BackupWriteError(f"backup kind {kind!r} is not one of {', '.join(BACKUP_KINDS)}")
        if (kind == "incremental") != (parent is not None):
            raise BackupWriteError("an incremental backup needs a parent and a full backup must not have one")
        if parent is not None and parent.vm != vm:
            raise BackupWriteError(f"parent backup {parent.backup_id} belongs to vm {parent.vm!r}, not {vm!r}")
        vm_definition = {} if vm_definition is None else vm_definition
        try:
            json.dumps(vm_definition)
        except (TypeError, ValueError) as e:
            raise BackupWriteError(f"vm_definition cannot be stored as JSON: {e}") from e
        if created is None:
            created = datetime.now(UTC)
        elif created.tzinfo is None:
            raise BackupWriteError(f"created {created.isoformat()} has no time zone")
        backup_id = new_backup_id(created) if backup_id is None else check_name("backup id", backup_id)
        if any(self._backups.glob(f"*/{backup_id}")):
            raise BackupExistsError(f"backup {backup_id} already exists in store {self.path}")
        # The lease comes first: GC treats a backup directory without a live
        # lease and without a manifest as abandoned.
        lease = WriterLease.acquire(self.path, vm, backup_id)
        try:
            mkdir_durable(self._backups / vm, exist_ok=True)
            backup_dir = self.backup_dir(vm, backup_id)
            try:
                mkdir_durable(backup_dir)
            except FileExistsError:
                raise BackupExistsError(f"backup {backup_id} already exists in store {self.path}") from None
        except BaseException:
            lease.release()
            raise
        return BackupSession(
            self,
            backup_dir,
            lease,
            vm=vm,
            backup_id=backup_id,
            created=created,
            kind=kind,
            parent=parent,
            checkpoint=checkpoint,
            vm_definition=vm_definition,
            workers=workers or os.cpu_count() or 1,
        )

    def list_backups(self, vm: str | None = None) -> list[BackupManifest]:
        """Committed backups, oldest first."""
        manifests = [self.load_manifest(path) for path in self.manifest_paths(vm)]
        return sorted(manifests, key=lambda m: (m.created, m.backup_id))

    def manifest_paths(self, vm: str | None = None) -> list[Path]:
        """The manifest of every committed backup (of one VM), unparsed."""
        pattern = f"{check_name('vm name', vm)}/*/{MANIFEST_FILE}" if vm is not None else f"*/*/{MANIFEST_FILE}"
        return sorted(self._backups.glob(pattern))

    def backup_dirs(self) -> list[Path]:
        """Every backups/<vm>/<id> directory: committed, being written or abandoned."""
        return sorted(p for p in self._backups.glob("*/*") if p.is_dir())

    def get_backup(self, backup_id: str) -> BackupManifest:
        check_name("backup id", backup_id)
        for path in self._backups.glob(f"*/{backup_id}/{MANIFEST_FILE}"):
            return self.load_manifest(path)
        raise BackupNotFoundError(f"backup {backup_id} not found in store {self.path}")

    def read_index(self, manifest: BackupManifest, disk_name: str) -> FixedIndex:
        """The disk's index, verified against the digest in the manifest."""
        disk = manifest.disk(disk_name)
        path = self.backup_dir(manifest.vm, manifest.backup_id) / disk.index
        what = f"index {path} of backup {manifest.backup_id} disk {disk.name}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IndexCorruptError(f"{what} is missing") from None
        if content_digest(data).hex() != disk.index_digest:
            raise IndexCorruptError(f"{what} does not match the digest recorded in its manifest")
        index = FixedIndex.from_bytes(data, str(path))
        if (index.disk_size, index.chunk_size) != (disk.size, disk.chunk_size):
            raise IndexCorruptError(f"{what} describes a different disk geometry than its manifest")
        return index

    def read_chunk(self, digest: bytes) -> bytes:
        """The chunk's plaintext, verified against its id."""
        return self.chunks.load(digest)

    def backup_dir(self, vm: str, backup_id: str) -> Path:
        return self._backups / vm / backup_id

    def load_manifest(self, path: Path) -> BackupManifest:
        """Parse and check one manifest.json; ManifestCorruptError if it is unusable."""
        manifest = BackupManifest.from_json(path.read_bytes(), str(path))
        try:
            for what, name in [("vm name", manifest.vm), ("backup id", manifest.backup_id)]:
                check_name(what, name)
            for disk in manifest.disks:
                check_name("disk name", disk.name)
                check_name("index file name", disk.index)
        except InvalidNameError as e:
            raise ManifestCorruptError(f"manifest {path} is invalid: {e}") from e
        if path.parent != self.backup_dir(manifest.vm, manifest.backup_id):
            raise ManifestCorruptError(
                f"manifest {path} belongs to backup {manifest.vm}/{manifest.backup_id}, not to its directory"
            )
        return manifest
