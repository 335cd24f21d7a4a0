"""A format-1 store written from docs/store-format.md alone (section "Format 1"), as Cairn wrote
them before packs: for the tests that read and upgrade such stores."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import blake3
import zstandard

from dedup.crypto import StoreKey, seal_key_file

CHUNK = 1 << 20
ZERO = bytes(32)


class Format1Store:
    def __init__(self, path: Path, chunk_size: int = CHUNK, passphrase: str | None = None) -> None:
        self.path = path
        self.chunk_size = chunk_size
        self.key = StoreKey.generate() if passphrase else None
        for sub in ("chunks", "backups", "locks", "writers"):
            (path / sub).mkdir(parents=True)
        config = {"format": "cairn-store", "version": 2 if self.key else 1, "chunk_size": chunk_size,
                  "compression": {"algorithm": "zstd", "level": 3}, "id": str(uuid.uuid4()),
                  "created": _now()}
        if self.key:
            (path / "key.json").write_bytes(seal_key_file(self.key, passphrase))
            config["encryption"] = {"cipher": "aes-256-gcm", "chunk_id": "blake3-keyed",
                                    "key_fingerprint": self.key.fingerprint}
        (path / "config.json").write_text(json.dumps(config))

    def backup(self, vm: str, backup_id: str, disks: dict[str, bytes], created: datetime,
               kind: str = "full", parent: str | None = None) -> None:
        directory = self.path / "backups" / vm / backup_id
        directory.mkdir(parents=True)
        entries = []
        for name, data in disks.items():
            count = -(-len(data) // self.chunk_size)
            digests = []
            for n in range(count):
                chunk = data[n * self.chunk_size:(n + 1) * self.chunk_size]
                digests.append(ZERO if chunk == bytes(len(chunk)) else self._store_chunk(chunk))
            index = (b"CAIRNIDX" + (1).to_bytes(4, "little") + self.chunk_size.to_bytes(4, "little")
                     + len(data).to_bytes(8, "little") + count.to_bytes(8, "little") + b"".join(digests))
            self._write_sealed(directory / f"{name}.index", f"backups/{vm}/{backup_id}/{name}.index", index)
            entries.append({"name": name, "size": len(data), "chunk_size": self.chunk_size, "index": f"{name}.index",
                            "index_digest": blake3.blake3(index).hexdigest(),
                            "stats": {"bytes_read": len(data), "chunks_total": count, "chunks_written": count,
                                      "chunks_deduplicated": 0, "chunks_reused": 0, "chunks_zero": 0,
                                      "bytes_stored": 0}})
        manifest = {"format_version": 1, "backup_id": backup_id, "vm": vm,
                    "created": created.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
                    "kind": kind, "parent": parent, "checkpoint": f"cairn-{backup_id}",
                    "vm_definition": {"name": vm}, "disks": entries, "notes": ["written as format 1"]}
        self._write_sealed(directory / "manifest.json", f"backups/{vm}/{backup_id}/manifest.json",
                           json.dumps(manifest).encode())

    def _store_chunk(self, chunk: bytes) -> bytes:
        digest = blake3.blake3(chunk, key=self.key.id_key).digest() if self.key else blake3.blake3(chunk).digest()
        hex_id = digest.hex()
        path = self.path / "chunks" / hex_id[:2] / hex_id[2:4] / hex_id
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = zstandard.ZstdCompressor(level=3).compress(chunk)
        path.write_bytes(self.key.seal(frame, digest) if self.key else frame)
        return digest

    def _write_sealed(self, path: Path, name: str, data: bytes) -> None:
        path.write_bytes(self.key.seal(data, name.encode()) if self.key else data)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
