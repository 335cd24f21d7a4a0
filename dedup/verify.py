"""Verify: re-read blocks and prove they still hold what their ids say; name what damage hurts.

Every manifest is parsed and every map walked (its pages are read and checked on the way, so
a damaged page shows as an unreadable disk of each backup whose map goes through it). Then
every block the maps reference, or a random sample of them, is read and checked: decrypted,
decompressed and re-hashed (blocks.fetch: packs in order, decoded on a thread pool). A bad
block is reported once with every (backup, disk, byte range) that uses it, found by a second
walk that looks only for the bad ids, so memory stays at one set of ids.

The block index is checked on the way: an index file that is damaged, a pack no index file
covers, a pack whose own trailer is damaged. When verify finds such a problem and no GC or
repair is running, it rebuilds the index from the packs (repair.py; a pack whose trailer is
damaged is read record by record up to the damage), then checks the blocks against the
rebuilt index: a damaged or truncated pack loses only the blocks inside it that are actually
damaged, and the report says which ones, and in which pack they were.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .errors import ChunkMissingError, StoreBusyError, StoreError
from .packs import PackFormatError, pack_file, read_trailer
from .references import collect_references, each_disk
from .repair import rebuild_index
from .store import Store, UnreadableBackup

ChunkProblem = Literal["missing", "corrupt"]
# progress(plaintext bytes checked, plaintext bytes to check)
VerifyProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ChunkUse:
    """Where a backup uses a block: bytes [offset, offset + length) of one of its disks."""

    vm: str
    backup_id: str
    disk: str
    offset: int
    length: int


@dataclass(frozen=True)
class BadChunk:
    chunk_id: str  # the block's (format 1: chunk's) id
    problem: ChunkProblem
    detail: str
    used_by: tuple[ChunkUse, ...]


@dataclass(frozen=True)
class VerifyReport:
    sample_percent: float
    backups: tuple[str, ...]  # ids of the backups whose manifest was read
    chunks_referenced: int  # blocks (and format-1 chunks) the backups reference
    chunks_checked: int
    bytes_checked: int  # plaintext
    bad_chunks: tuple[BadChunk, ...]
    unreadable: tuple[UnreadableBackup, ...]
    seconds: float
    index_problems: tuple[str, ...] = ()  # what was wrong with the block index
    index_rebuilt: bool = False

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
                    f"disk {use.disk} bytes {use.offset}-{use.offset + use.length - 1}: block {bad.chunk_id} "
                    f"is {bad.problem}"
                )
        return damage


def verify_store(
    store: Store,
    sample_percent: float = 100.0,
    workers: int | None = None,
    progress: VerifyProgress | None = None,
    rng: random.Random | None = None,
) -> VerifyReport:
    """Check every referenced block, or sample_percent of them chosen at random."""
    if not 0 < sample_percent <= 100:
        raise ValueError(f"sample percentage must be in (0, 100], got {sample_percent}")
    started = time.monotonic()
    index_problems, rebuilt, lost_in = _check_index(store)
    refs = collect_references(store)
    chosen = [(b, False) for b in sorted(refs.blocks)] + [(c, True) for c in sorted(refs.chunks)]
    if sample_percent < 100:
        chosen = (rng or random.Random()).sample(chosen, math.ceil(len(chosen) * sample_percent / 100))
    problems, checked = _check_blocks(store, chosen, workers, progress, lost_in)
    return VerifyReport(
        sample_percent=sample_percent,
        backups=tuple(sorted(m.backup_id for m in refs.manifests)),
        chunks_referenced=len(refs.blocks) + len(refs.chunks),
        chunks_checked=len(chosen),
        bytes_checked=checked,
        bad_chunks=_name_users(store, problems),
        unreadable=tuple(refs.unreadable),
        seconds=time.monotonic() - started,
        index_problems=tuple(index_problems),
        index_rebuilt=rebuilt,
    )


def _check_index(store: Store) -> tuple[list[str], bool, dict[bytes, str]]:
    """What is wrong with the block index, whether it was rebuilt, and which pack each block of
    a damaged or vanished pack was in (as the index files said before the rebuild)."""
    if store.config.layout != 2:
        return [], False, {}
    store.blocks.reload()
    index = store.blocks.index
    load = index.load_report
    problems = [f"index file {name}: {why}" for name, why in sorted(load.damaged_files.items())]
    problems += [f"pack {name} is covered by no index file" for name in load.unindexed]
    problems += [f"pack {name}: {why}" for name, why in sorted(load.unreadable.items())]
    for name, info in sorted(index.packs.items()):
        if name in load.unindexed:
            continue
        try:
            if tuple(read_trailer(store.backend, pack_file(name), info.size)) != info.records:
                problems.append(f"pack {name}: its trailer and the index disagree")
        except (PackFormatError, OSError) as e:
            problems.append(f"pack {name}: {e}")
    lost = dict(load.lost_records)
    if not problems:
        return [], False, lost
    try:
        report = rebuild_index(store)
    except StoreBusyError:
        return [*problems, "not rebuilt: a GC, repair or upgrade is running"], False, lost
    return [*problems, *report.problems], True, lost


def _check_blocks(store: Store, chosen: list[tuple[bytes, bool]], workers: int | None,
                  progress: VerifyProgress | None, lost_in: dict[bytes, str]
                  ) -> tuple[dict[bytes, tuple[ChunkProblem, str]], int]:
    index = store.blocks.ensure_loaded()
    total = 0
    for block_id, legacy in chosen:
        found = None if legacy else index.get(block_id)
        total += found[1].plain_length if found else 0
    done = 0
    problems: dict[bytes, tuple[ChunkProblem, str]] = {}
    blocks = [b for b, legacy in chosen if not legacy]
    chunks = [c for c, legacy in chosen if legacy]
    for source, ids in ((store.blocks, blocks), (store.chunks, chunks)):
        for block_id, outcome in source.fetch(ids, workers):
            if isinstance(outcome, StoreError):
                problem: ChunkProblem = "missing" if isinstance(outcome, ChunkMissingError) else "corrupt"
                detail = str(outcome)
                if block_id in lost_in:
                    detail += f" (it was in pack {lost_in[block_id]}, which is damaged or gone)"
                problems[block_id] = (problem, detail)
                continue
            done += len(outcome)
            if progress:
                progress(done, max(total, done))
    return problems, done


def _name_users(store: Store, problems: dict[bytes, tuple[ChunkProblem, str]]) -> tuple[BadChunk, ...]:
    if not problems:
        return ()
    users: dict[bytes, list[ChunkUse]] = {block_id: [] for block_id in problems}
    for manifest, disk in each_disk(store):
        try:
            for entry in disk.entries():
                uses = users.get(entry.block_id)
                if uses is None:
                    continue
                last = uses[-1] if uses else None
                if last and (last.backup_id, last.disk, last.offset + last.length) == (
                        manifest.backup_id, disk.name, entry.offset):
                    uses[-1] = ChunkUse(last.vm, last.backup_id, last.disk, last.offset, last.length + entry.length)
                else:
                    uses.append(ChunkUse(manifest.vm, manifest.backup_id, disk.name, entry.offset, entry.length))
        except StoreError:
            continue  # an unreadable map: reported as such
    return tuple(
        BadChunk(block_id.hex(), problem, detail, tuple(users[block_id]))
        for block_id, (problem, detail) in sorted(problems.items())
    )

