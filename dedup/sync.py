"""Off-site copies: backups copied from one store to another, sending only what the target lacks.

The target is a replica of the source: the same block size and, in an encrypted store, the
same key (its key.json is copied, still sealed by the passphrase). Blocks, map pages and
manifests go over as they are stored, compressed and sealed, so the target never needs the
key and a store off-site holds only ciphertext. The source's key is needed: to read the maps
(which blocks a backup uses), and to check each block before it leaves, so damage is not
copied off-site.

For each backup of the source (of the chosen VMs) that the target has not committed, oldest
first, a sync:

1. takes a lease on the target (writers/sync-<backup-id>-<hex>): the target's GC then leaves
   alone every pack written or touched from now on (gc.py), as for a backup being written;
2. walks the backup's maps. A block or page the target's index has is held there (its pack
   touched once, as a writer does); any other is read from its source pack, checked, and
   appended to the target's packs;
3. once those packs are durable, writes one index file for them; then, holding the backup's own
   lease, its other files (protected, its retention lock) and last its manifest, the source's
   bytes: an encrypted store seals a manifest with its path as associated data, the same in both;
   a locked backup copied into an Object Lock bucket is retained there too (immutability.py);
4. lets go of the leases.

Resumable: a cut (a killed process, a lost network) loses at most the packs being filled.
Packs closed before it stay in the target, and the next run finds their blocks there (the block
index reads the trailer of a pack no index file covers) and sends only the rest. The next run
does not wait for the cut run's lease to expire: each run's lease has a name of its own.

Bandwidth: the bytes appended to the target's packs pass a token bucket. A backend sends a pack
in pieces of 8 (RADOS) to 16 MiB (S3), so the limit holds over seconds, not milliseconds.

Push or pull is only where it runs: the appliance holding the source pushes to a target URL;
an off-site one pulls from a source URL (it then needs the source's passphrase, and the source
never holds the target's credentials, which keeps an intruder on the source away from the copies).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .backend import Backend, join, write_file
from .blockindex import INDEX_DIR, PackInfo, write_index_file
from .blocks import _runs
from .config import CONFIG_FILE, StoreConfig
from .errors import (
    ChunkCorruptError,
    ChunkMissingError,
    IndexCorruptError,
    ManifestCorruptError,
    StoreMismatchError,
    StoreNotEmptyError,
)
from .immutability import locked_backups, retain_in_storage
from .leases import WriterLease
from .location import open_backend
from .locks import LOCKS_DIR, WRITERS_DIR
from .manifest import MANIFEST_FILE, BackupManifest
from .packs import DATA, PACKS_DIR, PAGE, RECORD_SIZE, ClosedPack, PackRecord, PackWriter, pack_file
from .references import References, mark_disk
from .store import BACKUPS_DIR, KEY_FILE, BackupDir, Store

READERS = 2  # source pack reads in flight: enough to overlap a remote store's latency

# progress(bytes sent, bytes to send in this backup, backup id)
SyncProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SyncReport:
    source: str
    target: str
    copied: tuple[str, ...]  # backup ids now in the target because of this run
    present: tuple[str, ...]  # backups the target had already
    skipped: tuple[str, ...]  # "backup-id: why" for backups that could not be copied
    blocks_sent: int  # blocks and map pages sent
    bytes_sent: int  # their stored bytes, record headers included
    blocks_present: int  # blocks and pages the target had: not sent
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.skipped


class Bandwidth:
    """A token bucket: take(n) returns once n more bytes fit under `rate` bytes/s (one second of burst)."""

    def __init__(self, rate: int | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"bandwidth must be a positive number of bytes per second, got {rate}")
        self.rate = rate
        self._allowance = float(rate or 0)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        if self.rate is None:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(float(self.rate), self._allowance + (now - self._last) * self.rate) - nbytes
            self._last = now
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if wait:
            time.sleep(wait)


def open_replica(source: Store, location: str | Backend) -> Store:
    """The target store of a sync, made a replica of the source if it does not exist yet.

    Opened without a key: a sync copies sealed bytes and never decodes on the target.
    StoreMismatchError if it exists with another block size or key."""
    backend = open_backend(location)
    try:
        if backend.stat(CONFIG_FILE) is None:
            return _init_replica(source, backend)
        config = StoreConfig.load(backend)
        wanted = source.config
        if config.layout != 2 or (config.block_size, config.key_fingerprint) != (wanted.block_size,
                                                                                   wanted.key_fingerprint):
            raise StoreMismatchError(
                f"store {backend.location} cannot receive backups from {source.location} as they are: it has "
                f"{_describe(config)}, the source {_describe(wanted)}. Sync into a new location (it becomes a "
                "replica of the source) or into an earlier replica")
    except BaseException:
        backend.close()
        raise
    return Store(backend, config)


def _init_replica(source: Store, backend: Backend) -> Store:
    root = backend.stat("")
    if root is not None and (not root.is_dir or backend.list("")):
        raise StoreNotEmptyError(f"cannot make {backend.location} a replica of {source.location}: it is neither "
                                 "empty nor a Cairn store")
    config = StoreConfig.new(source.config.block_size, source.config.pack_size, source.config.zstd_level,
                             source.config.key_fingerprint)
    backend.create_root()
    for sub in (PACKS_DIR, INDEX_DIR, BACKUPS_DIR, LOCKS_DIR, WRITERS_DIR):
        backend.make_dir(sub)
    try:
        write_file(backend, KEY_FILE, source.backend.read(KEY_FILE))
    except FileNotFoundError:
        pass  # plain, or its key file is kept outside the store: so it stays
    config.save(backend)  # last: a store exists once it is complete
    return Store(backend, config)


def _describe(config: StoreConfig) -> str:
    if config.layout != 2:
        return "format 1"
    key = f"key {config.key_fingerprint}" if config.key_fingerprint else "no encryption"
    return f"{config.block_size >> 10} KiB blocks and {key}"


def sync_store(source: Store, target: Store, vms: Sequence[str] | None = None,
               bandwidth: int | None = None, progress: SyncProgress | None = None) -> SyncReport:
    """Copy every committed backup of `vms` (default: all) that the target lacks."""
    started = time.monotonic()
    source.require_format2("a sync")
    chosen: list[str | None] = list(vms) if vms else [None]
    listing = [m for vm in chosen for m in source.list_backups(vm)]
    have = {d.backup_id for d in target.committed()}
    run = _Run(source, target, Bandwidth(bandwidth), progress)
    for manifest in sorted(listing, key=lambda m: (m.created, m.backup_id)):
        if manifest.backup_id in have:
            run.present.append(manifest.backup_id)
        elif manifest.format_version != 2:
            run.skipped.append(f"{manifest.backup_id}: format 1, which is not copied: run cairn store upgrade first")
        else:
            run.copy(manifest)
    return SyncReport(source.location, target.location, tuple(run.copied), tuple(run.present),
                      tuple(run.skipped), run.blocks_sent, run.bytes_sent, run.blocks_present,
                      time.monotonic() - started)


@dataclass
class _Run:
    source: Store
    target: Store
    bandwidth: Bandwidth
    progress: SyncProgress | None
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    blocks_sent: int = 0
    bytes_sent: int = 0
    blocks_present: int = 0

    def copy(self, manifest: BackupManifest) -> None:
        backend = self.target.backend
        lease = WriterLease.acquire(backend, manifest.vm, f"sync-{manifest.backup_id}-{secrets.token_hex(4)}")
        try:
            try:
                needed = self._needed(manifest)
            except (IndexCorruptError, ChunkMissingError, ChunkCorruptError) as e:
                self.skipped.append(f"{manifest.backup_id}: its maps cannot be read in the source: {e}")
                return
            missing = self._hold_present(needed)
            try:
                self._send(manifest.backup_id, missing)
            except (ChunkMissingError, ChunkCorruptError) as e:
                self.skipped.append(f"{manifest.backup_id}: damaged in the source, not copied: {e}")
                return
            self._commit(manifest)
            until = locked_backups(self.source, [manifest]).get(manifest.backup_id)
            if until is not None:  # the lock record came along; a bucket with Object Lock holds the copy too
                retain_in_storage(self.target, manifest, until, needed)
            self.copied.append(manifest.backup_id)
        finally:
            lease.release()

    def _needed(self, manifest: BackupManifest) -> set[bytes]:
        refs = References()
        for disk in manifest.disks:
            mark_disk(self.source.disk_map(manifest, disk), refs)
        return refs.pages | refs.blocks

    def _hold_present(self, needed: set[bytes]) -> list[bytes]:
        """Touch the target's packs holding what it has (once each); what it lacks, to send."""
        self.target.blocks.reload()
        index = self.target.blocks.index
        held: dict[str, bool] = {}
        missing = []
        for block_id in needed:
            found = index.get(block_id)
            if found is not None:
                pack = found[0]
                if pack not in held:
                    held[pack] = self.target.backend.touch(pack_file(pack))
                if held[pack]:
                    self.blocks_present += 1
                    continue
            missing.append(block_id)
        return missing

    def _send(self, backup_id: str, missing: list[bytes]) -> None:
        """Read the missing records from the source's packs, check them, append them to the target's."""
        located: list[tuple[str, PackRecord]] = []
        for block_id in missing:
            found = self.source.blocks.locate(block_id)
            if found is None:
                raise ChunkMissingError(f"block {block_id.hex()} is in no pack of the source", block_id.hex())
            located.append(found)
        total = sum(RECORD_SIZE + record.stored_length for _, record in located)
        index = self.target.blocks.index
        writers = {kind: PackWriter(self.target.backend, self.target.config.pack_size,
                                    lambda pack: index.add(_pack_info(pack))) for kind in (DATA, PAGE)}
        sent = 0
        try:
            for record, stored in self._read(located):
                self.source.blocks.codec.decode(stored, record.codec, record.block_id, record.plain_length)
                self.bandwidth.take(RECORD_SIZE + len(stored))
                writers[record.kind].append(record.block_id, record.kind, record.codec, stored, record.plain_length)
                sent += RECORD_SIZE + len(stored)
                self.blocks_sent += 1
                self.bytes_sent += RECORD_SIZE + len(stored)
                if self.progress:
                    self.progress(sent, total, backup_id)
            packs = [*writers[DATA].finish(), *writers[PAGE].finish()]
        except BaseException:
            for writer in writers.values():
                writer.abort()  # closed packs stay: the next run finds their blocks in the target
            raise
        if packs:
            write_index_file(self.target.backend, (_pack_info(p) for p in packs))

    def _read(self, located: list[tuple[str, PackRecord]]) -> Iterable[tuple[PackRecord, bytes]]:
        """(record, stored bytes) in pack order; READERS runs are read ahead."""
        pool = ThreadPoolExecutor(READERS, thread_name_prefix="cairn-sync-read")
        backend = self.source.backend
        try:
            pending: deque[tuple[Future[bytes], int, tuple[PackRecord, ...]]] = deque()
            runs = iter(_runs(located))
            for run in runs:
                pending.append((pool.submit(backend.read_range, pack_file(run.pack), run.start, run.end - run.start),
                                run.start, run.records))
                while len(pending) > READERS:
                    yield from _slice(*pending.popleft())
            while pending:
                yield from _slice(*pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _commit(self, manifest: BackupManifest) -> None:
        """Under the backup's own lease: its directory, its other files, then its manifest."""
        source, backend = self.source.backend, self.target.backend
        directory = BackupDir(manifest.vm, manifest.backup_id)
        lease = WriterLease.take_over(backend, manifest.vm, manifest.backup_id)
        try:
            backend.make_dir(join(BACKUPS_DIR, manifest.vm))
            backend.make_dir(directory.name)
            files = [e.name for e in source.list(directory.name) if not e.is_dir and not e.name.startswith(".")]
            for name in sorted(files, key=lambda n: n == MANIFEST_FILE):
                try:
                    write_file(backend, directory.file(name), source.read(directory.file(name)))
                except FileNotFoundError:
                    if name == MANIFEST_FILE:
                        raise ManifestCorruptError(f"backup {manifest.backup_id} was removed from the source "
                                                   "while it was copied") from None
        finally:
            lease.release()


def _slice(read: Future[bytes], start: int, records: tuple[PackRecord, ...]) -> list[tuple[PackRecord, bytes]]:
    data = read.result()
    out = []
    for r in records:
        stored = data[r.offset - start:r.offset - start + r.stored_length]
        if len(stored) != r.stored_length:
            raise ChunkCorruptError(f"block {r.block_id.hex()}: its pack ends inside it", r.block_id.hex())
        out.append((r, stored))
    return out


def _pack_info(pack: ClosedPack) -> PackInfo:
    return PackInfo(pack.name, pack.size, 0, pack.records)
