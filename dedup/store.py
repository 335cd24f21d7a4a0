"""Store: the facade over a store, wherever its files are (backend.py).

    store/
      config.json                                 store settings (config.py)
      key.json                                    sealed key of an encrypted store (crypto.py)
      chunks/ab/cd/<id-hex>                       one zstd frame per chunk (chunks.py)
      backups/<vm>/<backup-id>/<disk>.index       fixed index per disk (index.py)
      backups/<vm>/<backup-id>/manifest.json      written last (manifest.py)
      backups/<vm>/<backup-id>/protected          never pruned (prune.py)
      writers/<backup-id>                         lease of a backup being written (leases.py)
      locks/gc                                    held by the running GC (gc.py)

Backup ids are unique across the whole store, so a backup can be found by
id alone. A backup directory without a manifest is a backup being written
or one whose writer died; readers ignore it. In an encrypted store indexes
and manifests are sealed with the store key (the file's store path as
associated data), chunks too (codec.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from .backend import Backend, join, write_file
from .buffers import keep_chunk_buffers_warm
from .chunks import CHUNKS_DIR, ChunkStore
from .codec import ChunkCodec, content_digest
from .config import CONFIG_FILE, StoreConfig
from .crypto import AeadFailed, StoreKey, seal_key_file, unlock_key_file
from .errors import (
    BackupExistsError,
    BackupNotFoundError,
    BackupWriteError,
    IndexCorruptError,
    InvalidNameError,
    KeyFileError,
    ManifestCorruptError,
    NotAStoreError,
    PassphraseRequiredError,
    StoreExistsError,
    StoreNotEmptyError,
    WrongKeyError,
)
from .index import FixedIndex
from .leases import WriterLease
from .local import local_file
from .location import open_backend
from .locks import LOCKS_DIR, WRITERS_DIR
from .manifest import BACKUP_KINDS, MANIFEST_FILE, BackupKind, BackupManifest
from .names import check_name, new_backup_id
from .writer import BackupSession

DEFAULT_CHUNK_SIZE = 64 << 20
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


class Store:
    def __init__(self, backend: Backend, config: StoreConfig, key: StoreKey | None = None) -> None:
        """Use Store.init or Store.open; this only wires the parts together."""
        keep_chunk_buffers_warm()
        self.backend = backend
        self.config = config
        self._key = key
        self.chunks = ChunkStore(backend, ChunkCodec(config.zstd_level, config.chunk_size, key))

    @property
    def location(self) -> str:
        """The directory or sftp:// URL of the store."""
        return self.backend.location

    @property
    def path(self) -> Path:
        """The store's directory; local stores only."""
        return local_file(self.backend, "")

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @classmethod
    def init(
        cls,
        location: str | os.PathLike[str] | Backend,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        *,
        passphrase: str | None = None,
        key_file: Path | None = None,
    ) -> Store:
        """Create a store in an empty or missing directory: a path, an sftp:// URL or an open backend.

        With a passphrase the store is encrypted: a new random key is sealed
        with the passphrase into key.json in the store, or into key_file
        (a local file) to keep key and data apart.
        """
        if key_file is not None and passphrase is None:
            raise KeyFileError("a key file is only written for an encrypted store: give a passphrase too")
        key = StoreKey.generate() if passphrase is not None else None
        config = StoreConfig.new(chunk_size, zstd_level, key.fingerprint if key else None)
        sealed_key = seal_key_file(key, passphrase) if key and passphrase is not None else None
        backend = open_backend(location)
        try:
            cls._check_empty(backend)
            if sealed_key is not None and key_file is not None:
                _write_new_local(key_file, sealed_key)
            backend.create_root()
            for sub in (CHUNKS_DIR, BACKUPS_DIR, LOCKS_DIR, WRITERS_DIR):
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
        """Open a store; an encrypted one needs the passphrase of its key file."""
        backend = open_backend(location)
        try:
            config = StoreConfig.load(backend)
            for sub in (CHUNKS_DIR, BACKUPS_DIR):
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
        if any(self.backend.stat(BackupDir(v, backup_id).name) for v in self._names(BACKUPS_DIR)):
            raise BackupExistsError(f"backup {backup_id} already exists in store {self.location}")
        # The lease comes first: GC treats a backup directory without a live
        # lease and without a manifest as abandoned.
        lease = WriterLease.acquire(self.backend, vm, backup_id)
        backup_dir = BackupDir(vm, backup_id)
        try:
            self.backend.make_dir(join(BACKUPS_DIR, vm))
            self.backend.make_dir(backup_dir.name)
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
        manifests = []
        for backup in self.committed(vm):
            try:
                manifests.append(self.load_manifest(backup))
            except FileNotFoundError:
                continue  # pruned since we listed it
        return sorted(manifests, key=lambda m: (m.created, m.backup_id))

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

    def read_index(self, manifest: BackupManifest, disk_name: str) -> FixedIndex:
        """The disk's index, verified against the digest in the manifest."""
        disk = manifest.disk(disk_name)
        name = BackupDir(manifest.vm, manifest.backup_id).file(disk.index)
        what = f"index {name} of backup {manifest.backup_id} disk {disk.name}"
        try:
            data = self.read_sealed(name)
        except FileNotFoundError:
            raise IndexCorruptError(f"{what} is missing") from None
        except AeadFailed as e:
            raise IndexCorruptError(f"{what} cannot be decrypted: {e}") from None
        if content_digest(data).hex() != disk.index_digest:
            raise IndexCorruptError(f"{what} does not match the digest recorded in its manifest")
        index = FixedIndex.from_bytes(data, name)
        if (index.disk_size, index.chunk_size) != (disk.size, disk.chunk_size):
            raise IndexCorruptError(f"{what} describes a different disk geometry than its manifest")
        return index

    def read_chunk(self, digest: bytes) -> bytes:
        """The chunk's plaintext, verified against its id."""
        return self.chunks.load(digest)

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
                check_name("index file name", disk.index)
        except InvalidNameError as e:
            raise ManifestCorruptError(f"manifest {name} is invalid: {e}") from e
        if (manifest.vm, manifest.backup_id) != (backup.vm, backup.backup_id):
            raise ManifestCorruptError(
                f"manifest {name} belongs to backup {manifest.vm}/{manifest.backup_id}, not to its directory"
            )
        return manifest

    def write_sealed(self, name: str, data: bytes) -> None:
        """Write an index or manifest atomically; sealed with the store key when there is one."""
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
