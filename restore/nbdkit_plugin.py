"""nbdkit Python plugin: one disk of one backup, read-only, straight from the store.

Loaded by nbdkit (see export.py), not imported by Cairn:

    nbdkit python restore/nbdkit_plugin.py store=DIR-OR-URL backup=ID disk=NAME

An encrypted store is unlocked as the CLI does it, from $CAIRN_STORE_PASSPHRASE (and
$CAIRN_STORE_KEY_FILE), which nbdkit inherits: secrets stay off its command line.

A read looks up the extents of its range in the disk's map (the tree's pages are cached as
they are read, so a read touches only the leaf it needs) and copies from their blocks, a few
of which are kept decoded: a guest or a copy reads a block in many small requests. Holes are
reported as such, so a client that copies (qemu's block jobs, qemu-img convert, nbdcopy)
keeps its result thin. Every block is checked against its id; a damaged one fails the read
with EIO instead of serving wrong bytes.
"""

import errno
import os
import threading
from collections import OrderedDict
from pathlib import Path

import nbdkit

from dedup import Store

API_VERSION = 2
# Decoded blocks kept for reads that come in pieces.
CACHED_BLOCKS = 16

_params: dict[str, str] = {}


class _Disk:
    def __init__(self, store: Store, backup_id: str, disk_name: str) -> None:
        manifest = store.get_backup(backup_id)
        self.map = store.disk_map(manifest, disk_name)
        self.size = self.map.size
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def block(self, block_id: bytes) -> bytes:
        with self._lock:
            if block_id in self._cache:
                self._cache.move_to_end(block_id)
                return self._cache[block_id]
        data = self.map.blocks.read(block_id)
        with self._lock:
            self._cache[block_id] = data
            while len(self._cache) > CACHED_BLOCKS:
                self._cache.popitem(last=False)
        return data


_disk: _Disk | None = None  # config_complete() opens it: nbdkit calls nothing that reads before


def _opened() -> _Disk:
    if _disk is None:
        raise RuntimeError("the backup is not open: config_complete() did not run")
    return _disk


def config(key: str, value: str) -> None:
    if key not in ("store", "backup", "disk"):
        raise RuntimeError(f"unknown parameter {key!r} (expected store=, backup=, disk=)")
    _params[key] = value


def config_complete() -> None:
    global _disk
    missing = {"store", "backup", "disk"} - set(_params)
    if missing:
        raise RuntimeError(f"missing parameters: {', '.join(sorted(missing))}")
    key_file = os.environ.get("CAIRN_STORE_KEY_FILE")
    store = Store.open(_params["store"], passphrase=os.environ.get("CAIRN_STORE_PASSPHRASE") or None,
                       key_file=Path(key_file) if key_file else None)
    _disk = _Disk(store, _params["backup"], _params["disk"])


def thread_model() -> int:
    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly: bool) -> int:  # the name nbdkit calls; shadows the builtin here only
    return 0


def get_size(_handle: int) -> int:
    return _opened().size


def can_write(_handle: int) -> bool:
    return False


def can_extents(_handle: int) -> bool:
    return True


def can_multi_conn(_handle: int) -> bool:
    return True


def is_rotational(_handle: int) -> bool:
    return False


def pread(_handle: int, buf: bytearray, offset: int, _flags: int) -> None:
    disk = _opened()
    end = offset + len(buf)
    position = offset
    try:
        for e in disk.map.entries(offset, end):
            if e.offset > position:
                buf[position - offset:e.offset - offset] = bytes(e.offset - position)
            block = disk.block(e.block_id)
            buf[e.offset - offset:e.end - offset] = block[e.block_offset:e.block_offset + e.length]
            position = e.end
    except Exception as e:
        nbdkit.set_error(errno.EIO)
        where = f"backup {_params['backup']} disk {_params['disk']}"
        raise RuntimeError(f"bytes {position}-{end - 1} of {where}: {e}") from e
    if position < end:
        buf[position - offset:] = bytes(end - position)


def extents(_handle: int, count: int, offset: int, _flags: int) -> list[tuple[int, int, int]]:
    disk = _opened()
    end = min(offset + count, disk.size)
    result = []
    position = offset
    for e in disk.map.entries(offset, end):
        if e.offset > position:
            result.append((position, e.offset - position, nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO))
        if result and result[-1][2] == 0 and result[-1][0] + result[-1][1] == e.offset:
            start, length, _ = result[-1]
            result[-1] = (start, length + e.length, 0)
        else:
            result.append((e.offset, e.length, 0))
        position = e.end
    if position < end:
        result.append((position, end - position, nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO))
    return result
