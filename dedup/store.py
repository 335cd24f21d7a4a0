"""Store: the facade over a store, wherever its files are (backend.py).

    store/
      config.json                                 store settings (config.py)
      key.json                                    sealed key of an encrypted store (crypto.py)
      packs/<hh>/<name>                           packs of blocks and map pages (packs.py)
      index/<name>                                the block index, a cache of the packs (blockindex.py)
      backups/<vm>/<backup-id>/manifest.json      written last (manifest.py), names each disk's map (maps.py)
      backups/<vm>/<backup-id>/protected          never pruned (prune.py)
      writers/<backup-id>                         lease of a backup being written (leases.py)
      locks/gc                                    held by GC, repair and upgrade (gc.py)
    format 1 (read only, legacy.py), until `cairn store upgrade`:
      chunks/ab/cd/<id>                           one zstd frame per chunk
      backups/<vm>/<backup-id>/<disk>.index       fixed index per disk

Backup ids are unique across the whole store, so a backup can be found by id alone. A backup
directory without a manifest is a backup being written or one whose writer died; readers
ignore it. In an encrypted store manifests (and format 1's indexes) are sealed with the store
key, the file's store path as associated data; blocks and pages with their id (codec.py).
Reading works the same on both formats: disk_map() gives a disk's extents, read_block() and
blocks_for() the bytes they name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from .backend import Backend, join, write_file
from .blockindex import INDEX_DIR
from .blocks import BlockStore
from .buffers import keep_buffers_warm
from .codec import BlockCodec, content_digest
from .config import CONFIG_FILE, MAX_CHUNK_SIZE, StoreConfig
from .crypto import AeadFailed, StoreKey, seal_key_file, unlock_key_file
from .errors import (
    BackupExistsError,
    BackupNotFoundError,
    BackupWriteError,
    ChunkCorruptError,
    ChunkMissingError,
    IndexCorruptError,
    InvalidNameError,
    KeyFileError,
    ManifestCorruptError,
    MapCorruptError,
    NotAStoreError,
    PassphraseRequiredError,
    StoreExistsError,
    StoreFormatError,
    StoreNotEmptyError,
    WrongKeyError,
)
from .leases import WriterLease
from .legacy import CHUNKS_DIR, ChunkFiles, FixedIndex
from .local import local_file
from .location import open_backend
from .locks import LOCKS_DIR, WRITERS_DIR
from .manifest import (
    BACKUP_KINDS,
    MANIFEST_FILE,
    BackupKind,
    BackupManifest,
    ChunkIndexRef,
    DiskEntry,
    MapRoot,
)
from .maps import MapEntry, MapReader, MapShape
from .names import check_name, new_backup_id
from .packs import PACKS_DIR
from .writer import BackupSession

# Chosen by measurement (bench/store.py, docs/store-format.md): see there for the numbers.
DEFAULT_BLOCK_SIZE = 2 << 20
DEFAULT_PACK_SIZE = 64 << 20
DEFAULT_ZSTD_LEVEL = 3
BACKUPS_DIR = "backups"
KEY_FILE = "key.json"


@dataclass(frozen=True)
class BackupDir:
    """backups/<vm>/<backup-id>: committed, being written or abandoned."""

    vm: str
    backup_id: str

    @property
    def name(self) -> str:
        return join(BACKUPS_DIR, self.vm, self.backup_id)

    def file(self, file_name: str) -> str:
        return join(self.name, file_name)


@dataclass(frozen=True)
class UnreadableBackup:
    """A committed backup (or one of its disks) that cannot be read, and why."""

    vm: str
    backup_id: str
    disk: str | None  # None when the manifest itself is unreadable
    error: str


@dataclass(frozen=True)
class BackupListing:
    """The committed backups that could be read, oldest first, and those that could not."""

    manifests: list[BackupManifest]
    unreadable: list[UnreadableBackup]


class DiskMap:
    """One disk of one backup, for reading: its extents and where their blocks come from."""

    def __init__(self, name: str, size: int, entries: MapReader | FixedIndex, blocks: BlockStore | ChunkFiles) -> None:
        self.name = name
        self.size = size
        self._entries = entries
        self.blocks = blocks

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[MapEntry]:
        """The extents holding data in [start, end), in disk order; everything else reads as zeros."""
        return self._entries.entries(start, end)

    @property
    def tree(self) -> MapReader | None:
        """The format-2 map (pages), None for a format-1 disk."""
        return self._entries if isinstance(self._entries, MapReader) else None


class Store:
    def __init__(self, backend: Backend, config: StoreConfig, key: StoreKey | None = None) -> None:
        """Use Store.init or Store.open; this only wires the parts together."""
        keep_buffers_warm()
        self.backend = backend
        self.config = config
        self._key = key
        block_size = config.block_size if config.layout == 2 else 0
        self.blocks = BlockStore(backend, BlockCodec(config.zstd_level, max(block_size, 1), key))
        # Format 1's chunks, read while a store is format 1 or being upgraded.
        self.chunks = ChunkFiles(backend, BlockCodec(config.zstd_level, MAX_CHUNK_SIZE, key))

    @property
    def location(self) -> str:
        """The directory or sftp:// URL of the store."""
        return self.backend.location

    @property
    def path(self) -> Path:
        """The store's directory; local stores only."""
        return local_file(self.backend, "")

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @classmethod
    def init(
        cls,
        location: str | os.PathLike[str] | Backend,
        block_size: int = DEFAULT_BLOCK_SIZE,
        pack_size: int = DEFAULT_PACK_SIZE,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
    ) -> Store:
        """Create a format-2 store in an empty or missing directory: a path, an sftp:// URL or an
        open backend.

        With a passphrase the store is encrypted: a new random key is sealed with the
        passphrase into key.json in the store, or into key_file (a local file) to keep key and
        data apart.
        """
        if key_file is not None and passphrase is None:
            raise KeyFileError("a key file is only written for an encrypted store: give a passphrase too")
        key = StoreKey.generate() if passphrase is not None else None
        config = StoreConfig.new(block_size, pack_size, zstd_level, key.fingerprint if key else None)
        sealed_key = seal_key_file(key, passphrase) if key and passphrase is not None else None
        backend = open_backend(location)
        try:
            cls._check_empty(backend)
            if sealed_key is not None and key_file is not None:
                _write_new_local(key_file, sealed_key)
            backend.create_root()
            for sub in (PACKS_DIR, INDEX_DIR, BACKUPS_DIR, LOCKS_DIR, WRITERS_DIR):
                backend.make_dir(sub)
            if sealed_key is not None and key_file is None:
                write_file(backend, KEY_FILE, sealed_key)
            # Last, so that a store exists only once it is complete.
            config.save(backend)
        except BaseException:
            backend.close()
            raise
        return cls(backend, config, key)

    @staticmethod
    def _check_empty(backend: Backend) -> None:
        if backend.stat(CONFIG_FILE) is not None:
            raise StoreExistsError(f"{backend.location} is already a Cairn store; open it instead of initialising it")
        root = backend.stat("")
        if root is not None and (not root.is_dir or backend.list("")):
            raise StoreNotEmptyError(f"cannot create a store in {backend.location}: it is not an empty directory")

    @classmethod
    def open(
        cls, location: str | os.PathLike[str] | Backend, *, passphrase: str | None = None, key_file: Path | None = None
    ) -> Store:
        """Open a store of either format; an encrypted one needs the passphrase of its key file."""
        backend = open_backend(location)
        try:
            config = StoreConfig.load(backend)
            for sub in (PACKS_DIR if config.layout == 2 else CHUNKS_DIR, BACKUPS_DIR):
                entry = backend.stat(sub)
                if entry is None or not entry.is_dir:
                    raise NotAStoreError(f"{backend.location} is not a complete Cairn store: {sub}/ is missing")
            key = cls._unlock(backend, config, passphrase, key_file) if config.encrypted else None
        except BaseException:
            backend.close()
            raise
        return cls(backend, config, key)

    @staticmethod
    def _unlock(backend: Backend, config: StoreConfig, passphrase: str | None, key_file: Path | None) -> StoreKey:
        where = backend.location
        if passphrase is None:
            raise PassphraseRequiredError(f"store {where} is encrypted: give the passphrase of its key")
        try:
            if key_file is not None:
                sealed, source = key_file.read_bytes(), str(key_file)
            else:
                sealed, source = backend.read(KEY_FILE), f"{where}/{KEY_FILE}"
        except FileNotFoundError:
            missing = key_file or f"{where}/{KEY_FILE}"
            raise KeyFileError(f"store {where} is encrypted and its key file {missing} does not exist") from None
        key = unlock_key_file(sealed, passphrase, source)
        if key.fingerprint != config.key_fingerprint:
            raise WrongKeyError(
                f"key file {source} holds key {key.fingerprint}, but store {where} was encrypted with key "
                f"{config.key_fingerprint}"
            )
        return key

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def with_config(self, config: StoreConfig) -> Store:
        """The same store, key and connection under another config (upgrade.py)."""
        return Store(self.backend, config, self._key)

    def require_format2(self, what: str) -> None:
        if self.config.layout != 2:
            raise StoreFormatError(f"store {self.location} is in format 1, which Cairn only reads: {what} needs "
                                   "format 2; run `cairn store upgrade` first")

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

        An incremental backup needs the parent it builds on, a full one has none. workers
        defaults to one per CPU. created, the moment the backup shows, defaults to now; set it
        when importing a backup taken earlier (retention rules go by it).
        """
        self.require_format2("a new backup")
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
        if any(self.backend.stat(BackupDir(v, backup_id).name) for v in self._names(BACKUPS_DIR)):
            raise BackupExistsError(f"backup {backup_id} already exists in store {self.location}")
        # The lease comes first: GC treats a backup directory without a live lease and without
        # a manifest as abandoned, and leaves packs touched after it alone.
        lease = WriterLease.acquire(self.backend, vm, backup_id)
        backup_dir = BackupDir(vm, backup_id)
        try:
            self.backend.make_dir(join(BACKUPS_DIR, vm))
            self.backend.make_dir(backup_dir.name)
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
        except BaseException:
            self.backend.remove_tree(backup_dir.name)
            lease.release()
            raise

    def scan_backups(self, vm: str | None = None) -> BackupListing:
        """Every committed backup (of one VM): those that read, oldest first, and those that do not."""
        manifests, unreadable = [], []
        for backup in self.committed(vm):
            try:
                manifests.append(self.load_manifest(backup))
            except FileNotFoundError:
                continue  # pruned since we listed it
            except (ManifestCorruptError, OSError) as e:
                unreadable.append(UnreadableBackup(backup.vm, backup.backup_id, None, str(e)))
        return BackupListing(sorted(manifests, key=lambda m: (m.created, m.backup_id)), unreadable)

    def list_backups(self, vm: str | None = None) -> list[BackupManifest]:
        """Committed backups whose manifest reads, oldest first (scan_backups also says which do not)."""
        return self.scan_backups(vm).manifests

    def committed(self, vm: str | None = None) -> list[BackupDir]:
        """Every backup (of one VM) that has a manifest, unparsed."""
        if vm is not None:
            check_name("vm name", vm)
        return [d for d in self.backup_dirs(vm) if self.backend.stat(d.file(MANIFEST_FILE)) is not None]

    def backup_dirs(self, vm: str | None = None) -> list[BackupDir]:
        """Every backups/<vm>/<id> directory: committed, being written or abandoned."""
        vms = [vm] if vm is not None else self._names(BACKUPS_DIR)
        return [BackupDir(v, backup_id) for v in vms for backup_id in self._names(join(BACKUPS_DIR, v))]

    def get_backup(self, backup_id: str) -> BackupManifest:
        check_name("backup id", backup_id)
        for vm in self._names(BACKUPS_DIR):
            try:
                return self.load_manifest(BackupDir(vm, backup_id))
            except FileNotFoundError:
                continue
        raise BackupNotFoundError(f"backup {backup_id} not found in store {self.location}")

    def disk_map(self, manifest: BackupManifest, disk: DiskEntry | str) -> DiskMap:
        """A disk of a backup for reading, either format; IndexCorruptError if its map cannot be opened."""
        entry = manifest.disk(disk) if isinstance(disk, str) else disk
        layout = entry.layout
        if isinstance(layout, MapRoot):
            shape = MapShape(layout.leaf_span, layout.fanout, layout.depth)
            root = bytes.fromhex(layout.root) if layout.root else None
            what = f"backup {manifest.backup_id} disk {entry.name}"
            return DiskMap(entry.name, entry.size, MapReader(lambda page_id: self._read_page(page_id, what), root,
                                                             shape, entry.size), self.blocks)
        return DiskMap(entry.name, entry.size, self._read_fixed_index(manifest, entry, layout), self.chunks)

    def _read_page(self, page_id: bytes, what: str) -> bytes:
        try:
            return self.blocks.read(page_id)
        except (ChunkMissingError, ChunkCorruptError, OSError) as e:
            raise MapCorruptError(f"the map of {what} cannot be read: {e}") from None

    def _read_fixed_index(self, manifest: BackupManifest, disk: DiskEntry, ref: ChunkIndexRef) -> FixedIndex:
        name = BackupDir(manifest.vm, manifest.backup_id).file(ref.index)
        what = f"index {name} of backup {manifest.backup_id} disk {disk.name}"
        try:
            data = self.read_sealed(name)
        except FileNotFoundError:
            raise IndexCorruptError(f"{what} is missing") from None
        except AeadFailed as e:
            raise IndexCorruptError(f"{what} cannot be decrypted: {e}") from None
        if content_digest(data).hex() != ref.index_digest:
            raise IndexCorruptError(f"{what} does not match the digest recorded in its manifest")
        index = FixedIndex.from_bytes(data, name)
        if (index.disk_size, index.chunk_size) != (disk.size, ref.chunk_size):
            raise IndexCorruptError(f"{what} describes a different disk geometry than its manifest")
        return index

    def read_block(self, manifest: BackupManifest, block_id: bytes) -> bytes:
        """The verified plaintext of a block (a chunk, in a format-1 backup) the backup references."""
        return self.chunks.read(block_id) if manifest.format_version == 1 else self.blocks.read(block_id)

    def backup_dir(self, vm: str, backup_id: str) -> Path:
        """The directory of a backup, for tools that work on files; local stores only."""
        return local_file(self.backend, BackupDir(vm, backup_id).name)

    def load_manifest(self, backup: BackupDir) -> BackupManifest:
        """Parse and check one manifest; FileNotFoundError if there is none, ManifestCorruptError if unusable."""
        name = backup.file(MANIFEST_FILE)
        try:
            manifest = BackupManifest.from_json(self.read_sealed(name), name)
        except AeadFailed as e:
            raise ManifestCorruptError(f"manifest {name} cannot be decrypted: {e}") from None
        try:
            for what, value in [("vm name", manifest.vm), ("backup id", manifest.backup_id)]:
                check_name(what, value)
            for disk in manifest.disks:
                check_name("disk name", disk.name)
                if isinstance(disk.layout, ChunkIndexRef):
                    check_name("index file name", disk.layout.index)
        except InvalidNameError as e:
            raise ManifestCorruptError(f"manifest {name} is invalid: {e}") from e
        if (manifest.vm, manifest.backup_id) != (backup.vm, backup.backup_id):
            raise ManifestCorruptError(
                f"manifest {name} belongs to backup {manifest.vm}/{manifest.backup_id}, not to its directory"
            )
        return manifest

    def write_sealed(self, name: str, data: bytes) -> None:
        """Write a manifest atomically; sealed with the store key when there is one."""
        write_file(self.backend, name, self._key.seal(data, name.encode()) if self._key else data)

    def read_sealed(self, name: str) -> bytes:
        """Read what write_sealed wrote; AeadFailed if it does not authenticate."""
        data = self.backend.read(name)
        return self._key.open(data, name.encode()) if self._key else data

    def _names(self, directory: str) -> list[str]:
        """Sorted names of the subdirectories that are VMs or backups; hidden ones are not."""
        return sorted(e.name for e in self.backend.list(directory) if e.is_dir and not e.name.startswith("."))


def _write_new_local(path: Path, data: bytes) -> None:
    """Write a file that must not exist yet (a key file is never silently replaced)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; choose another path") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
