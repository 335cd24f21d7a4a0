"""Helpers shared by the store and restore tests: small stores and disk images.

The stores are small-scale format-2 stores: 64 KiB blocks in packs of 1 MiB, so a few MiB of
test data spans many blocks and several packs. disk_image() describes content in units of
CHUNK (1 MiB) for readability; the store's own block size does not matter to it.
"""

import random
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from dedup import BackupManifest, Store, collect_garbage

MiB = 1 << 20
CHUNK = MiB
BLOCK = 64 << 10
PACK = MiB


def new_store(path: Path, block_size: int = BLOCK, pack_size: int = PACK, **options) -> Store:
    return Store.init(path, block_size=block_size, pack_size=pack_size, **options)


def disk_image(chunk_layout: str, chunk_size: int = CHUNK, tail: int = 0, seed: int = 0) -> bytes:
    """Disk content described per chunk: "r" random, "z" zeros, "s" sparse
    (zeros with a few random 4 KiB blocks), "t" text-like (compressible).
    `tail` adds a short last chunk of random bytes."""
    rng = random.Random(seed)
    parts = []
    for kind in chunk_layout:
        if kind == "r":
            parts.append(rng.randbytes(chunk_size))
        elif kind == "z":
            parts.append(bytes(chunk_size))
        elif kind == "s":
            chunk = bytearray(chunk_size)
            for _ in range(3):
                at = rng.randrange(0, chunk_size // 4096) * 4096
                chunk[at : at + 4096] = rng.randbytes(4096)
            parts.append(bytes(chunk))
        elif kind == "t":
            words = [b"cairn ", b"backup ", b"chunk ", b"qemu ", b"kvm\n"]
            text = b"".join(rng.choice(words) for _ in range(chunk_size // 4))
            parts.append(text[:chunk_size].ljust(chunk_size, b"."))
        else:
            raise ValueError(kind)
    parts.append(rng.randbytes(tail))
    return b"".join(parts)


def backup_image(store: Store, vm: str, disks: dict[str, bytes], **session_args) -> BackupManifest:
    """A full backup of in-memory disk images, put in 1 MiB pieces."""
    with store.begin_backup(vm, **session_args) as session:
        for name, data in disks.items():
            writer = session.disk(name, len(data))
            for start in range(0, len(data), CHUNK):
                piece = data[start : start + CHUNK]
                writer.record_read(len(piece))
                writer.put(start, piece)
        return session.commit()


def backup_changes(store: Store, parent: BackupManifest, changes: dict[str, list[tuple[int, bytes]]],
                   sizes: dict[str, int] | None = None, **session_args) -> BackupManifest:
    """An incremental on `parent` that gives only `changes`: disk -> [(offset, new bytes)]."""
    with store.begin_backup(parent.vm, kind="incremental", parent=parent, **session_args) as session:
        for disk in parent.disks:
            size = (sizes or {}).get(disk.name, disk.size)
            writer = session.disk(disk.name, size)
            for offset, data in sorted(changes.get(disk.name, [])):
                writer.put(offset, data)
        return session.commit()


def read_back(store: Store, manifest: BackupManifest, disk: str) -> bytes:
    """The disk's bytes, read through its map as a restore would."""
    disk_map = store.disk_map(manifest, disk)
    out = bytearray(disk_map.size)
    for e in disk_map.entries():
        block = store.read_block(manifest, e.block_id)
        out[e.offset : e.end] = block[e.block_offset : e.block_offset + e.length]
    return bytes(out)


def pack_files(store: Store) -> list[Path]:
    return sorted(p for p in (store.path / "packs").rglob("*") if p.is_file() and not p.name.startswith("."))


def block_pack(store: Store, block_id: bytes) -> Path:
    """The pack file holding a block."""
    pack, _ = store.blocks.locate(block_id)
    return store.path / "packs" / pack[:2] / pack


def block_ids(store: Store, manifest: BackupManifest, disk: str) -> list[bytes]:
    """The disk's blocks in disk order, each once."""
    return list(dict.fromkeys(e.block_id for e in store.disk_map(manifest, disk).entries()))


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def backup_path(store: Store, vm: str, backup_id: str) -> Path:
    """The directory of a backup in a local store."""
    return store.backup_dir(vm, backup_id)


def ingest_images(store: Store, vm: str, images: dict[str, Path], **session_args) -> BackupManifest:
    """A full backup of image files the way a stopped VM's is taken: qemu-nbd, libnbd, the store's writer."""
    from transports import NbdSource, ingest_disk
    from transports.offline import OfflineExport

    export = OfflineExport({disk: str(path) for disk, path in images.items()}, "cairn-test", {d: None for d in images})
    points = export.open()
    try:
        with store.begin_backup(vm, **session_args) as session:
            for point in points:
                writer = session.disk(point.disk, point.size)
                with NbdSource.of(point) as source:
                    stats = ingest_disk(source, writer, incremental=False)
                writer.record_read(stats.bytes_read)
            manifest = session.commit()
    except BaseException:
        export.close(success=False)
        raise
    export.close(success=True)
    return manifest


def gc_locks_exclude_and_expire(store: Store, other: Store, data: bytes, expire: Callable[[str], None]) -> str:
    """A backend's locks, through two Store objects on one location: a second GC is refused
    while `other` holds the GC lock; a writer of `other` that vanishes (closed mid-backup) keeps
    its unfinished backup until `expire(backup_id)` lets its lease lapse, and the next GC then
    removes it. Returns that backup's id."""
    import pytest

    from dedup import StoreBusyError

    held = other.backend.try_lock("locks/gc")
    assert held is not None
    with pytest.raises(StoreBusyError, match="another GC"):
        collect_garbage(store)
    held.release()
    collect_garbage(store)

    session = other.begin_backup("web1")
    session.disk("vda", len(data)).put(0, data)
    session._pipeline.drain()
    other.close()   # the lease's heartbeat stops, as if the process had died
    assert collect_garbage(store, grace=timedelta(0)).abandoned_backups_removed == ()
    expire(session.backup_id)
    report = collect_garbage(store, grace=timedelta(0))
    assert report.abandoned_backups_removed == (f"web1/{session.backup_id}",)
    return session.backup_id


def backups_beside_gc(stores: dict[str, Store], images: dict[str, bytes], gc_store: Store,
                      *others: Callable[[], object]) -> dict[str, BackupManifest]:
    """Back up each VM's image (through its own Store object) while a GC without grace runs, and
    `others` beside them, all started at once; then a second GC. Returns the manifests."""
    manifests: dict[str, BackupManifest] = {}
    start = threading.Barrier(len(images) + len(others) + 1)

    def back_up(vm: str) -> None:
        start.wait()
        manifests[vm] = backup_image(stores[vm], vm, {"vda": images[vm]}, workers=2)

    def other(work: Callable[[], object]) -> None:
        start.wait()
        work()

    threads = [threading.Thread(target=back_up, args=(vm,)) for vm in images]
    threads += [threading.Thread(target=other, args=(work,)) for work in others]
    for t in threads:
        t.start()
    start.wait()
    collect_garbage(gc_store, grace=timedelta(0))
    for t in threads:
        t.join()
    collect_garbage(gc_store, grace=timedelta(0))
    assert set(manifests) == set(images), "a backup thread failed"
    return manifests
