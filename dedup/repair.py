"""`cairn store repair`: rebuild the block index from the packs alone.

The index is a cache (blockindex.py); this replaces all of it. Each pack is listed from its
trailer; a pack whose trailer is damaged or cut off (a truncated file) is read whole and its
records are walked from the start up to the damage (packs.scan_records), so every record
before it is indexed again and only what the damage took is lost. One new index file then
describes every pack, and the old index files are removed.

It takes the GC lock: a GC consolidating the index meanwhile would remove the new file as
one it had read, or write one from a stale view. Backups and restores go on: an index file
that appears while repair runs describes packs repair also read, and readers find blocks
through the trailers of packs no file covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .backend import join
from .blockindex import INDEX_DIR, PackInfo, list_packs, write_index_file
from .gc import hold_gc_lock
from .packs import PackFormatError, pack_file, read_trailer, scan_records
from .store import Store

# progress(packs done, packs in the store)
RepairProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class RepairReport:
    packs: int
    blocks: int
    index_files_replaced: int
    salvaged: dict[str, int]  # damaged pack -> records still readable in it
    problems: tuple[str, ...]  # one line per damaged pack


def rebuild_index(store: Store, progress: RepairProgress | None = None) -> RepairReport:
    store.require_format2("repair")
    lock = hold_gc_lock(store, "repair")
    try:
        backend = store.backend
        old_files = [e.name for e in backend.list(INDEX_DIR) if not e.is_dir and not e.name.startswith(".")]
        packs = list_packs(backend)
        infos, salvaged, problems = [], {}, []
        for done, (name, entry) in enumerate(sorted(packs.items()), 1):
            try:
                records = read_trailer(backend, pack_file(name), entry.size)
            except PackFormatError as e:
                try:
                    records, stopped = scan_records(backend.read(pack_file(name)))
                except FileNotFoundError:
                    continue
                salvaged[name] = len(records)
                problems.append(f"pack {name} is damaged ({e}): {len(records)} blocks before byte {stopped} "
                                "are indexed again, anything after is lost")
            except FileNotFoundError:
                continue
            infos.append(PackInfo(name, entry.size, entry.mtime_ns, tuple(records)))
            if progress:
                progress(done, len(packs))
        if infos:
            write_index_file(backend, infos)
        for name in old_files:
            backend.remove(join(INDEX_DIR, name))
        store.blocks.reload()
    finally:
        lock.release()
    return RepairReport(len(infos), sum(len(i.records) for i in infos), len(old_files), salvaged, tuple(problems))
