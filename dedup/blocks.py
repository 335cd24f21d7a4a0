"""Reading blocks out of packs: one at a time, or many in pack order with parallel decoding.

A block is found through the block index (blockindex.py), read with one ranged read of its
pack and decoded (codec.py: decrypted, decompressed, checked against its id). The index can
be stale while a GC repacks: a pack that is gone sends the reader to its `.gc` name (a GC
moves a pack aside before it deletes it) and then through a reloaded index to the pack that
now holds the block, so a restore running beside a GC never fails for it.

fetch() is the bulk path of restore, verify, GC and upgrade: it sorts the blocks by pack and
offset, reads neighbouring records of a pack in one request of up to READ_SPAN bytes, and
decodes on a thread pool (zstd, BLAKE3 and AES-GCM release the GIL) while the caller consumes
the results in that same order, with at most a few requests in flight.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .backend import Backend
from .blockindex import BlockIndex
from .codec import BlockCodec
from .errors import ChunkCorruptError, ChunkMissingError, StoreError
from .packs import PackRecord, pack_file, trash_name

# One ranged read covers neighbouring records up to this many bytes, skipping gaps up to GAP.
READ_SPAN = 16 << 20
GAP = 1 << 20


@dataclass(frozen=True)
class _Run:
    """Records of one pack read with one request."""

    pack: str
    start: int
    end: int
    records: tuple[PackRecord, ...]


class BlockStore:
    def __init__(self, backend: Backend, codec: BlockCodec) -> None:
        self.backend = backend
        self.codec = codec
        self.index = BlockIndex(backend)
        self._loaded = False
        self._load_lock = threading.Lock()

    def ensure_loaded(self) -> BlockIndex:
        if not self._loaded:
            with self._load_lock:
                if not self._loaded:
                    self.index.load()
                    self._loaded = True
        return self.index

    def reload(self) -> None:
        with self._load_lock:
            self.index.load()
            self._loaded = True

    def locate(self, block_id: bytes) -> tuple[str, PackRecord] | None:
        return self.ensure_loaded().get(block_id)

    def read(self, block_id: bytes) -> bytes:
        """The verified plaintext of a block; ChunkMissingError, ChunkCorruptError.

        A block the index does not know, or whose pack is gone, is looked for again after
        loading what is new in the store: another process may have written or repacked it."""
        for attempt in range(2):
            found = self.locate(block_id)
            if found is not None:
                pack, record = found
                try:
                    stored = self._read_range(pack, record.offset, record.stored_length)
                except FileNotFoundError:
                    self.index.forget(block_id)
                else:
                    return self._decode(stored, record, pack)
            if attempt == 0:
                self.reload()
        hex_id = block_id.hex()
        raise ChunkMissingError(f"block {hex_id} is in no pack of the store", hex_id)

    def fetch(self, block_ids: Iterable[bytes], workers: int | None = None,
              ahead: int | None = None) -> Iterator[tuple[bytes, bytes | StoreError]]:
        """(id, plaintext or the error that stopped it) for every id, in pack order."""
        index = self.ensure_loaded()
        located: list[tuple[str, PackRecord]] = []
        unknown = []
        for block_id in block_ids:
            found = index.get(block_id)
            if found is None:
                unknown.append(block_id)
            else:
                located.append(found)
        if unknown:
            self.reload()  # written or moved by another process since we loaded
            for block_id in unknown:
                found = index.get(block_id)
                if found is None:
                    hex_id = block_id.hex()
                    yield block_id, ChunkMissingError(f"block {hex_id} is in no pack of the store", hex_id)
                else:
                    located.append(found)
        workers = workers or os.cpu_count() or 1
        pool = ThreadPoolExecutor(workers, thread_name_prefix="cairn-fetch")
        try:
            pending: deque[Future[list[tuple[bytes, bytes | StoreError]]]] = deque()
            for run in _runs(located):
                pending.append(pool.submit(self._read_run, run))
                if len(pending) >= (ahead or 2 * workers):
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_run(self, run: _Run) -> list[tuple[bytes, bytes | StoreError]]:
        try:
            data = self._read_range(run.pack, run.start, run.end - run.start)
        except FileNotFoundError:
            # Repacked since the index was read: each block goes the long way.
            return [(r.block_id, self._read_or_error(r.block_id)) for r in run.records]
        results: list[tuple[bytes, bytes | StoreError]] = []
        view = memoryview(data)
        for r in run.records:
            stored = view[r.offset - run.start:r.offset - run.start + r.stored_length]
            try:
                if len(stored) != r.stored_length:
                    raise ChunkCorruptError(f"block {r.block_id.hex()}: pack {run.pack} ends inside it",
                                            r.block_id.hex())
                results.append((r.block_id, self._decode(stored, r, run.pack)))
            except StoreError as e:
                results.append((r.block_id, e))
        return results

    def _read_or_error(self, block_id: bytes) -> bytes | StoreError:
        try:
            return self.read(block_id)
        except StoreError as e:
            return e

    def _read_range(self, pack: str, offset: int, length: int) -> bytes:
        try:
            return self.backend.read_range(pack_file(pack), offset, length)
        except FileNotFoundError:
            # Moved aside by a GC that has not decided yet, or that crashed before deciding.
            return self.backend.read_range(trash_name(pack), offset, length)

    def _decode(self, stored: bytes | memoryview, record: PackRecord, pack: str) -> bytes:
        try:
            return self.codec.decode(stored, record.codec, record.block_id, record.plain_length)
        except ChunkCorruptError as e:
            raise ChunkCorruptError(f"{e} (pack {pack})", e.chunk_id) from None


def _runs(located: list[tuple[str, PackRecord]]) -> Iterator[_Run]:
    located.sort(key=lambda found: (found[0], found[1].offset))
    run: list[PackRecord] = []
    pack = ""
    for name, record in located:
        if run and (name != pack or record.offset - (run[-1].offset + run[-1].stored_length) > GAP
                    or record.offset + record.stored_length - run[0].offset > READ_SPAN):
            yield _Run(pack, run[0].offset, run[-1].offset + run[-1].stored_length, tuple(run))
            run = []
        if run and record.offset == run[-1].offset:
            continue  # the same block asked for twice
        pack = name
        run.append(record)
    if run:
        yield _Run(pack, run[0].offset, run[-1].offset + run[-1].stored_length, tuple(run))
