"""Helpers shared by the store and restore tests: small stores and disk images."""

import random
from pathlib import Path

from dedup import BackupManifest, Store

MiB = 1 << 20
CHUNK = MiB


def new_store(path: Path, chunk_size: int = CHUNK) -> Store:
    return Store.init(path, chunk_size=chunk_size)


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
    """A full backup of in-memory disk images, put chunk by chunk."""
    with store.begin_backup(vm, **session_args) as session:
        for name, data in disks.items():
            writer = session.disk(name, len(data))
            for chunk_no in range(writer.chunk_count):
                start = chunk_no * writer.chunk_size
                chunk = data[start : start + writer.chunk_size]
                writer.record_read(len(chunk))
                writer.put(chunk_no, chunk)
        return session.commit()


def read_back(store: Store, manifest: BackupManifest, disk: str) -> bytes:
    index = store.read_index(manifest, disk)
    parts = []
    for chunk_no in range(index.chunk_count):
        if index.is_zero(chunk_no):
            parts.append(bytes(index.chunk_length(chunk_no)))
        else:
            parts.append(store.read_chunk(index.digest(chunk_no)))
    return b"".join(parts)


def chunk_files(store: Store) -> list[Path]:
    return sorted(p for p in (store.path / "chunks").rglob("*") if p.is_file())


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
