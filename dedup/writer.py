"""Writing one backup: a BackupSession with one DiskWriter per disk.

The caller reads the source and gives each disk's bytes in increasing offset order, each
byte at most once: put(offset, data) for what it read, zero(offset, length) for what reads
as zeros. A full backup gives every byte. An incremental gives what changed since its parent
(and what the parent cannot supply: must_read()); every other byte keeps the parent's extent,
so the new backup is as complete a point as the parent without reading it again.

put() cuts data at block boundaries (block_size, the store's setting). A piece that fills
its whole block-sized slot becomes a block of its own, exactly what a full read of that slot
stores, so fulls of similar disks share blocks. Smaller pieces, the scattered writes an
incremental sees, are gathered into one block of up to block_size, and each piece's extent
points into it: 4 KiB writes cost 4 KiB each, not a block each. All-zero slots and pieces
become holes.

Hashing, zero detection, compression and sealing run on the session's worker pool so reading
overlaps with them; put() blocks when the pool's queue is full, so memory stays at a few
blocks per worker whatever the disk size. put() takes ownership of the buffer: the caller
must not modify it afterwards. Blocks go into data packs, the disks' map pages (maps.py) into
page packs; both are PackWriters, so a pack is closed while the next one fills.

A block the store already holds is not written again. Referencing it relies on its pack
surviving a concurrent GC, so the session touches that pack (once: its mtime then postdates
the session's lease, and GC leaves packs that new alone, see gc.py); a pack that is gone when
touched means the block is written anew. The same holds for the parent's extents: opening an
incremental disk walks the parent's whole map (its pages are small: a few KiB per 64 MiB of
data), holds every pack it references and reports the extents whose blocks are lost as
must_read(), so damage is read again rather than inherited.

Nothing is visible to readers until commit(): every pack is durable, then the index file for
them, then the manifest. abort() removes the backup directory; packs it closed stay for GC.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Self

from .blockindex import PackInfo, write_index_file
from .errors import (
    BackupIncompleteError,
    BackupWriteError,
    ChunkWriteError,
    DiskNotFoundError,
    IndexCorruptError,
    MapCorruptError,
)
from .manifest import MANIFEST_FILE, BackupKind, BackupManifest, DiskEntry, DiskStats, MapRoot
from .maps import MapEntry, MapReader, MapShape, build_tree, encode_leaf, join_adjacent, splice
from .names import check_name
from .packs import DATA, PAGE, RECORD_SIZE, ClosedPack, PackWriter, pack_file
from .pipeline import JobPipeline

if TYPE_CHECKING:
    from .leases import WriterLease
    from .store import BackupDir, Store

_Buffer = bytes | bytearray | memoryview


class BackupSession:
    def __init__(
        self,
        store: Store,
        backup_dir: BackupDir,
        lease: WriterLease,
        *,
        vm: str,
        backup_id: str,
        created: datetime,
        kind: BackupKind,
        parent: BackupManifest | None,
        checkpoint: str | None,
        vm_definition: dict[str, Any],
        workers: int,
        rewrite: bool = False,
    ) -> None:
        """rewrite: the directory holds a committed backup this session writes again (upgrade.py);
        an abort must leave it as it is."""
        self.store = store
        self.vm = vm
        self.backup_id = backup_id
        self.created = created
        self.kind = kind
        self.parent = parent
        self.checkpoint = checkpoint
        self.vm_definition = vm_definition
        self.block_size = store.config.block_size
        self._dir = backup_dir
        self._rewrite = rewrite
        self._lease = lease
        # Loaded again: another process may have written packs since this store was opened.
        store.blocks.reload()
        self._index = store.blocks.index
        self._codec = store.blocks.codec
        self._pipeline = JobPipeline(workers)
        self._data_packs = PackWriter(store.backend, store.config.pack_size, self._pack_closed)
        self._page_packs = PackWriter(store.backend, store.config.pack_size, self._pack_closed)
        self._disks: dict[str, DiskWriter] = {}
        self._notes: list[str] = []
        # Ids this session stores or found stored, so two workers that meet the same new block
        # at once write it once; and the packs it touched (held) or found gone.
        self._claimed: set[bytes] = set()
        self._held: set[str] = set()
        self._gone: set[str] = set()
        self._lock = threading.Lock()
        # calloc'd and never written: costs no memory, and comparing against it is a memcmp.
        self._zero_block = bytes(self.block_size)
        self._state = "open"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Leaving the block without commit() is a failure whatever the reason: the backup
        # must not be half there.
        self.abort()

    def disk(self, name: str, size: int) -> DiskWriter:
        """Start writing a disk of `size` bytes."""
        self._check_open()
        check_name("disk name", name)
        if name in self._disks:
            raise BackupWriteError(f"backup {self.backup_id}: disk {name!r} was already added")
        if not isinstance(size, int) or size < 0:
            raise BackupWriteError(f"backup {self.backup_id}: disk {name!r} has invalid size {size!r}")
        writer = DiskWriter(self, name, size, self._parent_map(name))
        self._disks[name] = writer
        return writer

    def note(self, text: str) -> None:
        """Record something a restore or an operator should know about this backup."""
        self._check_open()
        self._notes.append(text)

    def commit(self) -> BackupManifest:
        """Wait for every block, write the maps, make the packs and their index durable, then
        write the manifest."""
        return self.publish(self.seal())

    def seal(self) -> BackupManifest:
        """Everything commit() does but writing the manifest, which it returns."""
        self._check_open()
        if not self._disks:
            raise BackupIncompleteError(f"backup {self.backup_id} has no disks")
        for writer in self._disks.values():
            writer.flush()
        self._pipeline.drain()
        for writer in self._disks.values():
            writer.check_complete()
        disks = tuple(writer.write_map() for writer in self._disks.values())
        packs = [*self._data_packs.finish(), *self._page_packs.finish()]
        if packs:
            write_index_file(self.store.backend, (_pack_info(p) for p in packs))
        return BackupManifest(
            backup_id=self.backup_id,
            vm=self.vm,
            created=self.created,
            kind=self.kind,
            parent=self.parent.backup_id if self.parent else None,
            checkpoint=self.checkpoint,
            vm_definition=self.vm_definition,
            disks=disks,
            notes=tuple(self._notes),
        )

    def publish(self, manifest: BackupManifest) -> BackupManifest:
        """Write the manifest seal() returned (or one with other metadata): the backup exists now."""
        self._check_open()
        self.store.write_sealed(self._dir.file(MANIFEST_FILE), manifest.to_json())
        self._state = "committed"
        self._pipeline.close()
        self._lease.release()
        return manifest

    def abort(self) -> None:
        """Discard the backup. Does nothing once committed or aborted."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._pipeline.close()
        self._data_packs.abort()
        self._page_packs.abort()
        if not self._rewrite:
            self.store.backend.remove_tree(self._dir.name)
        self._lease.release()

    def _check_open(self) -> None:
        if self._state != "open":
            raise BackupWriteError(f"backup {self.backup_id} is already {self._state}")

    def _parent_map(self, name: str) -> ParentMap | None:
        if self.parent is None:
            return None
        try:
            tree = self.store.disk_map(self.parent, self.parent.disk(name)).tree
            if tree is None:
                self.note(f"parent of {name} is a format-1 backup, nothing inherited from it")
                return None
            return ParentMap.walk(self, tree)
        except DiskNotFoundError:
            return None
        except IndexCorruptError as e:
            self.note(f"parent map of {name} unusable, nothing inherited from it: {e}")
            return None

    # --- blocks ------------------------------------------------------------------------

    def store_block(self, data: _Buffer, kind: int) -> tuple[bytes, int]:
        """(id, bytes added to the store) of a block, written unless the store holds it."""
        block_id = self._codec.block_id(data)
        with self._lock:
            if block_id in self._claimed:
                return block_id, 0
            self._claimed.add(block_id)
        found = self._index.get(block_id)
        if found is not None and self.hold_pack(found[0]):
            return block_id, 0
        codec, stored = self._codec.encode(data, block_id)
        packs = self._data_packs if kind == DATA else self._page_packs
        packs.append(block_id, kind, codec, stored, memoryview(data).nbytes)
        return block_id, RECORD_SIZE + len(stored)

    def holds(self, block_id: bytes) -> bool:
        """Whether the block is stored (or being stored by this session), its pack held for us."""
        with self._lock:
            if block_id in self._claimed:
                return True
        found = self._index.get(block_id)
        return found is not None and self.hold_pack(found[0])

    def hold_pack(self, pack: str) -> bool:
        """Touch the pack once in this session so GC leaves it alone; False if it is gone."""
        with self._lock:
            if pack in self._held:
                return True
            if pack in self._gone:
                return False
        held = self.store.backend.touch(pack_file(pack))
        with self._lock:
            (self._held if held else self._gone).add(pack)
        return held

    def _pack_closed(self, pack: ClosedPack) -> None:
        self._index.add(_pack_info(pack))


def _pack_info(pack: ClosedPack) -> PackInfo:
    return PackInfo(pack.name, pack.size, 0, pack.records)


@dataclass
class _Block:
    """A block being stored; its id is known once a worker has hashed it."""

    id: bytes | None = None
    zero: bool = False


@dataclass
class _Change:
    offset: int
    length: int
    block: _Block | None  # None: a hole
    block_offset: int = 0


@dataclass
class ParentMap:
    """The parent's map of a disk, walked once: its leaves, their data bytes, the lost extents."""

    reader: MapReader
    leaves: dict[int, bytes]  # leaf number -> page id
    leaf_bytes: dict[int, int]  # leaf number -> data bytes in it
    lost: list[tuple[int, int]]  # (offset, length) whose block is gone from the store

    @classmethod
    def walk(cls, session: BackupSession, reader: MapReader) -> ParentMap:
        """Read every page of the parent's map; hold the packs of its pages and blocks."""
        leaves, leaf_bytes, lost = {}, {}, []
        for page_id, level, start in reader.pages():
            if not session.holds(page_id):
                raise MapCorruptError(f"map page {page_id.hex()} is gone from the store")
            if level:
                continue
            number = start // reader.shape.leaf_span
            leaf = reader.leaf(number, page_id)
            leaves[number] = page_id
            leaf_bytes[number] = sum(e.length for e in leaf.entries)
            missing = {block_id for block_id in leaf.block_ids if not session.holds(block_id)}
            lost += [(e.offset, e.length) for e in leaf.entries if e.block_id in missing]
        return cls(reader, leaves, leaf_bytes, lost)


class DiskWriter:
    """Collects the changes of one disk; they become its map at commit."""

    def __init__(self, session: BackupSession, name: str, size: int, parent: ParentMap | None) -> None:
        self.name = name
        self.size = size
        self.block_size = session.block_size
        self._session = session
        self._parent = parent
        self._changes: list[_Change] = []
        self._given_until = 0
        self._covered = 0  # bytes given
        self._gather = bytearray()
        self._gather_block = _Block()
        self._stats = DiskStats()
        self._lock = threading.Lock()

    @property
    def incremental(self) -> bool:
        """Whether bytes not given keep the parent's content."""
        return self._parent is not None

    def must_read(self) -> list[tuple[int, int]]:
        """(offset, length) an incremental must give although they did not change: the parent's
        extents whose blocks the store lost, and what lies beyond the parent's disk."""
        if self._parent is None:
            return [(0, self.size)]
        ranges = [(o, min(n, self.size - o)) for o, n in self._parent.lost if o < self.size]
        if self.size > self._parent.reader.size:
            ranges.append((self._parent.reader.size, self.size - self._parent.reader.size))
        return ranges

    @property
    def bytes_read(self) -> int:
        return self._stats.bytes_read

    @property
    def bytes_stored(self) -> int:
        """What this disk added to the store: blocks and map pages, record headers included."""
        return self._stats.bytes_stored + self._stats.metadata_stored

    def record_read(self, nbytes: int) -> None:
        """Account bytes read from the source (put() cannot know: a caller may read only the
        allocated parts of a block)."""
        with self._lock:
            self._stats.bytes_read += nbytes

    def put(self, offset: int, data: _Buffer) -> None:
        """Store the disk's bytes at offset; blocks while the worker queue is full.

        Raises ChunkWriteError if an earlier block of the session failed.
        """
        view = memoryview(data).cast("B")
        self._take(offset, view.nbytes)
        end = offset + view.nbytes
        position = offset
        while position < end:
            slot = position - position % self.block_size
            slot_end = min(slot + self.block_size, self.size)
            piece_end = min(end, slot_end)
            piece = view[position - offset:piece_end - offset]
            if position == slot and piece_end == slot_end:
                block = _Block()
                self._changes.append(_Change(position, piece_end - position, block))
                self._session._pipeline.submit(partial(self._store, piece, block))
            else:
                self._gather_piece(position, piece)
            position = piece_end

    def zero(self, offset: int, length: int) -> None:
        """Declare [offset, offset + length) all zeros without reading it."""
        self._take(offset, length)
        self._changes.append(_Change(offset, length, None))

    def link(self, offset: int, length: int, block_id: bytes, block_offset: int) -> bool:
        """Give [offset, offset + length) as bytes of a block the store holds, without reading
        them; False, giving nothing, if the store does not hold it."""
        if not self._session.holds(block_id):
            return False
        self._take(offset, length)
        self._changes.append(_Change(offset, length, _Block(block_id), block_offset))
        return True

    def flush(self) -> None:
        """Store the gathered pieces not yet stored (commit does this)."""
        if self._gather:
            data, block = bytes(self._gather), self._gather_block
            self._gather, self._gather_block = bytearray(), _Block()
            self._session._pipeline.submit(lambda: self._store(data, block))

    def check_complete(self) -> None:
        if self._parent is None:
            if self._covered != self.size:
                raise BackupIncompleteError(
                    f"backup {self._session.backup_id}: disk {self.name} has {self.size - self._covered} of "
                    f"{self.size} bytes never put or zeroed")
            return
        for offset, length in self._not_given(sorted(self.must_read())):
            beyond = offset >= self._parent.reader.size
            raise BackupIncompleteError(
                f"backup {self._session.backup_id}: disk {self.name}: bytes {offset}-{offset + length - 1} must be "
                f"given ({'they are beyond the parent disk' if beyond else 'the parent lost them'})")

    def write_map(self) -> DiskEntry:
        """Splice this backup's changes into the parent's map; store the new pages."""
        shape = MapShape.for_size(self.size)
        changes = self._resolved()
        by_leaf: dict[int, list[MapEntry | tuple[int, int]]] = {}
        for change in changes:
            for number, piece in _split(change, shape.leaf_span):
                by_leaf.setdefault(number, []).append(piece)
        leaves: dict[int, bytes] = {}
        inherited = 0
        parent = self._parent
        leaf_count = shape.leaf_count(self.size)
        if parent is not None:
            reuse_pages = (parent.reader.shape.leaf_span == shape.leaf_span)
            last = leaf_count - 1
            for number, page_id in parent.leaves.items():
                # A leaf the disk's new end cuts, or of another shape, is rebuilt like a changed one.
                if not reuse_pages or number >= last:
                    by_leaf.setdefault(number, [])
                elif number not in by_leaf:
                    leaves[number] = page_id
                    inherited += parent.leaf_bytes[number]
        for number, leaf_changes in sorted(by_leaf.items()):
            if number >= leaf_count:
                continue
            start = number * shape.leaf_span
            end = min(start + shape.leaf_span, self.size)
            old = parent.reader.entries(start, end) if parent is not None else ()
            entries = splice(old, leaf_changes, end)
            ours = sum(c.length for c in leaf_changes if isinstance(c, MapEntry))
            inherited += sum(e.length for e in entries) - ours
            if entries:
                leaves[number] = self._store_page(encode_leaf(start, shape.leaf_span, entries))
        root = build_tree(leaves, shape, self._store_page)
        self._stats.bytes_inherited = inherited
        return DiskEntry(self.name, self.size, MapRoot(root.hex() if root else None, shape.depth, shape.leaf_span,
                                                       shape.fanout), self._stats)

    def _store_page(self, page: bytes) -> bytes:
        page_id, added = self._session.store_block(page, PAGE)
        if added:
            self._stats.pages_written += 1
            self._stats.metadata_stored += added
        return page_id

    def _resolved(self) -> list[MapEntry | tuple[int, int]]:
        """The changes as map extents (blocks hashed by now) and holes, in disk order."""
        resolved: list[MapEntry | tuple[int, int]] = []
        for c in self._changes:
            if c.block is None or c.block.zero:
                resolved.append((c.offset, c.length))
            else:
                assert c.block.id is not None
                resolved.append(MapEntry(c.offset, c.length, c.block.id, c.block_offset))
        data = join_adjacent([r for r in resolved if isinstance(r, MapEntry)])
        holes = [r for r in resolved if not isinstance(r, MapEntry)]
        return sorted([*data, *holes], key=lambda r: r[0])

    def _gather_piece(self, offset: int, piece: memoryview) -> None:
        if self._session._zero_block.startswith(piece):
            self._changes.append(_Change(offset, piece.nbytes, None))
            return
        if len(self._gather) + piece.nbytes > self.block_size:
            self.flush()
        self._changes.append(_Change(offset, piece.nbytes, self._gather_block, len(self._gather)))
        self._gather += piece

    def _store(self, data: _Buffer, block: _Block) -> None:
        """Worker side of put()."""
        try:
            if self._session._zero_block.startswith(data):
                block.zero = True
                return
            block.id, added = self._session.store_block(data, DATA)
            with self._lock:
                if added:
                    self._stats.blocks_written += 1
                    self._stats.bytes_stored += added
                else:
                    self._stats.blocks_deduplicated += 1
        except Exception as e:
            raise ChunkWriteError(
                f"backup {self._session.backup_id}: disk {self.name}: a block could not be stored: {e}") from e

    def _take(self, offset: int, length: int) -> None:
        self._session._check_open()
        if not isinstance(offset, int) or not isinstance(length, int) or length < 0 or offset + length > self.size:
            raise BackupWriteError(f"disk {self.name}: bytes {offset}+{length} are outside its {self.size} bytes")
        if offset < self._given_until:
            raise BackupWriteError(f"disk {self.name}: offset {offset} was already given (ranges must be given "
                                   f"in increasing order, up to {self._given_until} so far)")
        self._given_until = offset + length
        self._covered += length
        self._stats.bytes_changed += length

    def _not_given(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The parts of sorted `ranges` that were neither put nor zeroed."""
        missing = []
        changes = iter(self._changes)
        change = next(changes, None)
        for offset, length in ranges:
            end = offset + length
            while offset < end:
                while change is not None and change.offset + change.length <= offset:
                    change = next(changes, None)
                if change is None or change.offset >= end:
                    missing.append((offset, end - offset))
                    break
                if change.offset > offset:
                    missing.append((offset, change.offset - offset))
                offset = change.offset + change.length
        return missing


def _split(change: MapEntry | tuple[int, int], leaf_span: int):
    """The change cut at leaf boundaries: (leaf number, piece)."""
    offset, length = change[0], change[1]
    end = offset + length
    while offset < end:
        number = offset // leaf_span
        stop = min(end, (number + 1) * leaf_span)
        if isinstance(change, MapEntry):
            piece: MapEntry | tuple[int, int] = MapEntry(offset, stop - offset, change.block_id,
                                                         change.block_offset + offset - change.offset)
        else:
            piece = (offset, stop - offset)
        yield number, piece
        offset = stop
