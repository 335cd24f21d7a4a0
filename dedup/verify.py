"""Verify: re-read chunks and prove they still hold what their ids say.

Every manifest is parsed and every index checked against the digest its
manifest records (that is how the indexes are read at all). Then each chunk
referenced by any index, or a random sample of them, is read, decompressed
and re-hashed on a thread pool: zstd and BLAKE3 release the GIL, so threads
scale with cores. A bad chunk is reported once, with every (backup, disk,
chunk number) that references it, found by a second pass over the indexes
that looks only for the bad ids, so memory stays at one set of chunk ids.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from .errors import ChunkCorruptError, ChunkMissingError
from .references import DiskIndex, UnreadableBackup, walk_indexes
from .store import Store

ChunkProblem = Literal["missing", "corrupt"]
# progress(plaintext bytes checked, plaintext bytes to check)
VerifyProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ChunkUse:
    vm: str
    backup_id: str
    disk: str
    chunk_no: int


@dataclass(frozen=True)
class BadChunk:
    chunk_id: str
    problem: ChunkProblem
    detail: str
    used_by: tuple[ChunkUse, ...]


@dataclass(frozen=True)
class VerifyReport:
    sample_percent: float
    backups: tuple[str, ...]  # ids of the backups whose manifest was read
    chunks_referenced: int
    chunks_checked: int
    bytes_checked: int  # plaintext
    bad_chunks: tuple[BadChunk, ...]
    unreadable: tuple[UnreadableBackup, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.bad_chunks and not self.unreadable

    def damaged_backups(self) -> dict[str, list[str]]:
        """Backup id -> what is wrong with it, one line per problem."""
        damage: dict[str, list[str]] = {}
        for u in self.unreadable:
            damage.setdefault(u.backup_id, []).append(u.error)
        for bad in self.bad_chunks:
            for use in bad.used_by:
                damage.setdefault(use.backup_id, []).append(
                    f"disk {use.disk} chunk {use.chunk_no}: chunk {bad.chunk_id} is {bad.problem}"
                )
        return damage


def verify_store(
    store: Store,
    sample_percent: float = 100.0,
    workers: int | None = None,
    progress: VerifyProgress | None = None,
    rng: random.Random | None = None,
) -> VerifyReport:
    """Check every referenced chunk, or sample_percent of them chosen at random."""
    if not 0 < sample_percent <= 100:
        raise ValueError(f"sample percentage must be in (0, 100], got {sample_percent}")
    started = time.monotonic()
    lengths, backups, unreadable = _referenced_chunks(store)
    chosen = sorted(lengths)
    if sample_percent < 100:
        chosen = (rng or random.Random()).sample(chosen, math.ceil(len(chosen) * sample_percent / 100))
    total = sum(lengths[d] for d in chosen)
    done = 0
    problems: dict[bytes, tuple[ChunkProblem, str]] = {}
    with ThreadPoolExecutor(workers or os.cpu_count() or 1, thread_name_prefix="cairn-verify") as pool:
        for digest, problem in zip(chosen, pool.map(lambda d: _check_chunk(store, d), chosen)):
            if problem is not None:
                problems[digest] = problem
            done += lengths[digest]
            if progress:
                progress(done, total)
    return VerifyReport(
        sample_percent=sample_percent,
        backups=backups,
        chunks_referenced=len(lengths),
        chunks_checked=len(chosen),
        bytes_checked=total,
        bad_chunks=_name_users(store, problems),
        unreadable=unreadable,
        seconds=time.monotonic() - started,
    )


def _referenced_chunks(store: Store) -> tuple[dict[bytes, int], tuple[str, ...], tuple[UnreadableBackup, ...]]:
    """Plaintext length of every referenced chunk, the backups read, and those that could not be."""
    lengths: dict[bytes, int] = {}
    backups: set[str] = set()
    unreadable: list[UnreadableBackup] = []
    for item in walk_indexes(store):
        if isinstance(item, UnreadableBackup):
            unreadable.append(item)
            continue
        backups.add(item.manifest.backup_id)
        for chunk_no, digest in item.index.stored_chunks():
            lengths[digest] = item.index.chunk_length(chunk_no)
    return lengths, tuple(sorted(backups)), tuple(unreadable)


def _check_chunk(store: Store, digest: bytes) -> tuple[ChunkProblem, str] | None:
    try:
        store.chunks.load(digest)
    except ChunkMissingError as e:
        return "missing", str(e)
    except (ChunkCorruptError, OSError) as e:
        return "corrupt", str(e)
    return None


def _name_users(store: Store, problems: dict[bytes, tuple[ChunkProblem, str]]) -> tuple[BadChunk, ...]:
    if not problems:
        return ()
    users: dict[bytes, list[ChunkUse]] = {digest: [] for digest in problems}
    for item in walk_indexes(store):
        if isinstance(item, DiskIndex):
            m = item.manifest
            for chunk_no, digest in item.index.stored_chunks():
                if digest in users:
                    users[digest].append(ChunkUse(m.vm, m.backup_id, item.disk, chunk_no))
    return tuple(
        BadChunk(digest.hex(), problem, detail, tuple(users[digest]))
        for digest, (problem, detail) in sorted(problems.items())
    )
