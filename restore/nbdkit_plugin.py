"""nbdkit Python plugin: one disk of one backup, read-only, straight from the store.

Loaded by nbdkit (see export.py), not imported by Cairn:

    nbdkit python restore/nbdkit_plugin.py store=DIR-OR-URL backup=ID disk=NAME

An encrypted store is unlocked as the CLI does it, from $CAIRN_STORE_PASSPHRASE
(and $CAIRN_STORE_KEY_FILE), which nbdkit inherits: secrets stay off its command
line.

Zero chunks are reported as holes, so a client that copies (qemu's block
jobs, qemu-img convert, nbdcopy) keeps its result thin. Every chunk is
checked against its id by Store.read_chunk; a damaged one fails the read
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
# Decompressed chunks kept for reads that come in pieces (a 64 MiB chunk is read as
# hundreds of small requests).
CACHED_CHUNKS = 4

_params: dict[str, str] = {}
_disk = None


class _Disk:
    def __init__(self, store: Store, backup_id: str, disk_name: str) -> None:
        manifest = store.get_backup(backup_id)
        self.store = store
        self.index = store.read_index(manifest, disk_name)
        self.size = manifest.disk(disk_name).size
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def chunk(self, chunk_no: int) -> bytes | None:
        """The chunk's bytes; None for a zero chunk."""
        if self.index.is_zero(chunk_no):
            return None
        with self._lock:
            if chunk_no in self._cache:
                self._cache.move_to_end(chunk_no)
                return self._cache[chunk_no]
        data = self.store.read_chunk(self.index.digest(chunk_no))
        with self._lock:
            self._cache[chunk_no] = data
            while len(self._cache) > CACHED_CHUNKS:
                self._cache.popitem(last=False)
        return data


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
    return _disk.size


def can_write(_handle: int) -> bool:
    return False


def can_extents(_handle: int) -> bool:
    return True


def can_multi_conn(_handle: int) -> bool:
    return True


def is_rotational(_handle: int) -> bool:
    return False


def pread(_handle: int, buf: bytearray, offset: int, _flags: int) -> None:
    index = _disk.index
    done = 0
    while done < len(buf):
        position = offset + done
        chunk_no = position // index.chunk_size
        start = position - index.chunk_offset(chunk_no)
        length = min(len(buf) - done, index.chunk_length(chunk_no) - start)
        try:
            data = _disk.chunk(chunk_no)
        except Exception as e:
            nbdkit.set_error(errno.EIO)
            raise RuntimeError(f"chunk {chunk_no} of backup {_params['backup']} disk {_params['disk']}: {e}") from e
        buf[done:done + length] = bytes(length) if data is None else data[start:start + length]
        done += length


def extents(_handle: int, count: int, offset: int, _flags: int) -> list[tuple[int, int, int]]:
    index = _disk.index
    result = []
    end = min(offset + count, _disk.size)
    position = offset
    while position < end:
        chunk_no = position // index.chunk_size
        chunk_end = index.chunk_offset(chunk_no) + index.chunk_length(chunk_no)
        kind = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO if index.is_zero(chunk_no) else 0
        result.append((position, chunk_end - position, kind))
        position = chunk_end
    return result
