"""The RADOS backend: a store in a Ceph pool, through librados (Debian's python3-rados).

    rados://POOL[/NAMESPACE]?conf=/etc/ceph/ceph.conf&id=cairn&keyring=PATH&timeout=30

One store per pool namespace (the default namespace without one). RADOS stores objects, and has
no directories, renames or listing by prefix (listing walks every object of the pool), so this
backend keeps a small file system of its own in the namespace:

    d:<dir>            a directory: an object whose omap has one key per entry, valued
                       {"o": data object, "s": size, "m": mtime ns} for a file,
                       {"i": base64 bytes, "s": size, "m": mtime ns} for a file of at most
                       INLINE bytes (a lease, a manifest, config.json: one operation to write),
                       {"d": 1, "m": mtime ns} for a subdirectory ("d:" is the store's root)
    f:<path>@<8 hex>   a larger file's bytes, one object, never changed once named (a pack is one)

A name changes only through one write operation on its directory's object, and RADOS applies
all the steps of one operation on one object atomically, each guarded by an omap compare
(omap_cmp: the entry still has the value we read, or is absent). So:

- an atomic write names a temporary entry `.<base>.<hex>.tmp` first, streams the bytes into a
  new data object (8 MiB writes, two in flight), then swaps temporary for final name in one
  operation and deletes the object it replaced. A writer that dies leaves the temporary entry,
  which GC sweeps like a local `.tmp` file (its data object goes with it);
- rename (GC's, always within one directory) moves the entry in one operation: the bytes stay;
- touch compares the entry and sets its mtime: False, changing nothing, once it is gone;
- list is one omap read per directory, however large the pool.

Locks are RADOS object locks (cls_lock) on the directory's object, one named lock per entry
(`rados -p POOL -N NS lock list d:writers`), taken with a duration of LOCK_SECONDS and renewed
every quarter of it by a heartbeat thread. They were chosen over a compare-and-swap lease
object because the OSD itself expires them on its own clock: a holder that dies or loses the
cluster loses the lock LOCK_SECONDS later with nothing to clean up, and no client clock is
involved. A renewal fails once the lock has expired and been taken (ENOENT), which ends the
heartbeat. A writer's lease is created under its lock (lock first, then the entry with an
absent-compare), so nobody sees a lease nobody holds.

Times: mtimes are written by Cairn, from the writing host's clock (librados would stamp object
mtimes with it too, in whole seconds). Cairn hosts sharing a store must keep their clocks in
step, as Ceph asks of every node; clock_error_ns (2 s) is what GC allows for.

Space: the pool is used with "full try": when a quota or the cluster is full, a write fails at
once with EDQUOT/ENOSPC (StoreFullError) instead of waiting for space, and deletes and omap
updates still work: prune, and GC short of writing packs, free space in a full pool (small
files live in omap, so locks and small index files are no data writes).
"""

from __future__ import annotations

import base64
import builtins
import errno
import json
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .backend import Entry, NewFile
from .errors import StoreError, StoreFullError, StoreUnreachableError
from .locks import guarded_create_lock, guarded_try_lock

LOCK_SECONDS = 30
CLOCK_ERROR_NS = 2_000_000_000
DEFAULT_TIMEOUT = 30.0
PART = 8 << 20  # bytes per write of a streamed file
INLINE = 16 << 10  # files up to this size live in their directory entry
IN_FLIGHT = 2  # writes of one file outstanding: two kept the OSD busy here, more gave nothing
ROOT = ""
_DIR = "d:"
_FILE = "f:"
_LOCK_PREFIX = "cairn."
_MUST_RENEW = 2  # cls_lock's LOCK_FLAG_MUST_RENEW: renew only a lock we still hold
_OMAP_PAGE = 1000
_CACHED_OBJECTS = 4096
_FULL = (errno.EDQUOT, errno.ENOSPC)


def _rados() -> Any:
    try:
        import rados
    except ImportError:
        raise StoreError("RADOS stores need librados' Python binding: apt-get install python3-rados "
                         "(and a Python environment that sees Debian's packages)") from None
    return rados


@dataclass(frozen=True)
class RadosOptions:
    """How to reach the cluster; None means librados' defaults (/etc/ceph, client.admin)."""

    conf: str | None = None
    client: str | None = None  # the cephx user without "client.", e.g. "cairn"
    keyring: str | None = None
    timeout: float = DEFAULT_TIMEOUT  # seconds for the monitors to answer, and for each operation


class RadosBackend:
    clock_error_ns = CLOCK_ERROR_NS

    def __init__(self, cluster: Any, ioctx: Any, location: str) -> None:
        self.location = location
        self.closed = False
        self._cluster = cluster
        self._io = ioctx
        self._rados = _rados()
        self._objects: OrderedDict[str, tuple[str, int]] = OrderedDict()  # path -> (data object, size)
        self._objects_lock = threading.Lock()
        self._locks: set[RadosLock] = set()  # held, with a heartbeat using the connection
        # Calls in progress: close() waits for them, as librados frees what they use.
        self._users = 0
        self._idle = threading.Condition()

    @classmethod
    def connect(cls, pool: str, namespace: str, options: RadosOptions) -> RadosBackend:
        rados = _rados()
        location = f"rados://{pool}/{namespace}" if namespace else f"rados://{pool}"
        timeout = str(int(options.timeout))
        conf = {"client_mount_timeout": timeout, "rados_mon_op_timeout": timeout, "rados_osd_op_timeout": timeout}
        if options.keyring:
            conf["keyring"] = options.keyring
        try:
            cluster = rados.Rados(conffile=options.conf or "", rados_id=options.client, conf=conf)
        except rados.ObjectNotFound:
            raise StoreUnreachableError(f"cannot reach store {location}: no Ceph configuration at "
                                        f"{options.conf or '/etc/ceph/ceph.conf'}; give ?conf=PATH") from None
        try:
            cluster.connect(timeout=int(options.timeout))
            ioctx = cluster.open_ioctx(pool)
        except rados.PermissionDeniedError as e:
            cluster.shutdown()
            raise StoreUnreachableError(
                f"cannot reach store {location}: the cluster refused client.{options.client or 'admin'} ({e}): "
                "check the key in its keyring (?keyring=PATH) and its caps (ceph auth get)") from None
        except rados.ObjectNotFound:
            cluster.shutdown()
            raise StoreUnreachableError(f"cannot reach store {location}: pool {pool!r} does not exist; "
                                        f"create it (ceph osd pool create {pool}) or name another") from None
        except rados.Error as e:
            cluster.shutdown()
            raise StoreUnreachableError(f"cannot reach store {location}: no answer from the Ceph monitors "
                                        f"within {options.timeout:g} s ({e}); check mon_host in the "
                                        "configuration and that the cluster is up (ceph -s)") from None
        ioctx.set_namespace(namespace)
        ioctx.set_osdmap_full_try()
        return cls(cluster, ioctx, location)

    # --- files ---------------------------------------------------------------

    def create_root(self) -> None:
        with self._errors("create the store"):
            self._io.set_xattr(_DIR, "cairn.dir", b"root")

    def read(self, name: str) -> bytes:
        return self._read_file(name, 0, None)

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        return self._read_file(name, offset, length)

    @contextmanager
    def atomic_writer(self, name: str) -> Iterator[NewFile]:
        with self._new_file(name, exclusive=False) as f:
            yield f

    def make_dir(self, name: str) -> None:
        with self._errors(f"create directory {name}"):
            self._io.set_xattr(_DIR + name, "cairn.dir", b"")
            parent, base = _split(name)
            try:
                self._update(parent, [(base, "", json.dumps({"d": 1, "m": time.time_ns()}))])
            except _Changed:
                pass  # it exists

    def stat(self, name: str) -> Entry | None:
        if name == ROOT:
            with self._errors("open the store"):
                try:
                    self._io.stat(_DIR)
                except self._rados.ObjectNotFound:
                    return None
            return Entry("", 0, 0, True)
        parent, base = _split(name)
        value = self._entry(parent, base)
        return None if value is None else _to_entry(base, value)

    def list(self, name: str) -> builtins.list[Entry]:
        return [_to_entry(base, value) for base, value in self._entries(name)]

    def touch(self, name: str) -> bool:
        parent, base = _split(name)
        while True:
            value = self._entry(parent, base)
            if value is None:
                return False
            fresh = json.loads(value) | {"m": time.time_ns()}
            try:
                self._update(parent, [(base, value, json.dumps(fresh))])
                return True
            except _Changed:
                continue  # touched or replaced meanwhile: look again

    def rename(self, source: str, target: str) -> None:
        parent, base = _split(source)
        target_parent, target_base = _split(target)
        if parent != target_parent:
            raise StoreError(f"store {self.location}: rename of {source} to {target} crosses directories, "
                             "which the RADOS backend does not do (the store never needs it)")
        while True:
            value = self._entry(parent, base)
            if value is None:
                raise FileNotFoundError(errno.ENOENT, f"{self.location}/{source} does not exist")
            replaced = self._entry(parent, target_base)
            try:
                self._update(parent, [(base, value, None), (target_base, replaced or "", value)])
                break
            except _Changed:
                continue
        if replaced is not None:
            self._remove_data(replaced)

    def remove(self, name: str) -> None:
        parent, base = _split(name)
        while True:
            value = self._entry(parent, base)
            if value is None:
                return
            try:
                self._update(parent, [(base, value, None)])
                break
            except _Changed:
                continue
        self._remove_data(value)

    def remove_tree(self, name: str) -> None:
        for base, value in self._entries(name):
            child = _join(name, base)
            if json.loads(value).get("d"):
                self.remove_tree(child)
            else:
                self.remove(child)
        with self._errors(f"remove {name}"):
            try:
                self._io.remove_object(_DIR + name)
            except self._rados.ObjectNotFound:
                pass
        if name != ROOT:
            self.remove(name)

    # --- locks ---------------------------------------------------------------

    def try_lock(self, name: str, create: bool = True) -> RadosLock | None:
        return guarded_try_lock(lambda: self.stat(name) is not None, lambda: self._lock(name),
                                lambda content: self._write_exclusive(name, content), create)

    def create_lock(self, name: str, content: bytes) -> RadosLock:
        return guarded_create_lock(lambda: self._lock(name), lambda content: self._write_exclusive(name, content), content,
                                   f"{self.location}/{name}")

    def close(self) -> None:
        """Disconnect, once the calls in progress (other threads') are done; later calls fail with
        StoreError. Locks still held are left to expire, as if this process had died."""
        with self._idle:
            if self.closed:
                return
            self.closed = True
            self._idle.wait_for(lambda: self._users == 0)
        for lock in list(self._locks):
            lock.stop_heartbeat()
        self._io.aio_flush()  # writes a writer left in flight
        self._io.close()
        self._cluster.shutdown()

    # --- internals -------------------------------------------------------------

    def _lock(self, name: str) -> RadosLock | None:
        parent, base = _split(name)
        lock = RadosLock(self, _DIR + parent, _LOCK_PREFIX + base, name)
        return lock if lock.acquire() else None

    def _write_exclusive(self, name: str, content: bytes) -> None:
        with self._new_file(name, exclusive=True) as f:
            f.write(content)

    @contextmanager
    def _new_file(self, name: str, exclusive: bool) -> Iterator[_ObjectWriter]:
        parent, base = _split(name)
        tag = secrets.token_hex(4)
        obj = f"{_FILE}{name}@{tag}"
        temp = f".{base}.{tag}.tmp"
        temp_value = json.dumps({"o": obj, "s": 0, "m": time.time_ns()})
        try:
            self._update(parent, [(temp, "", temp_value)])
        except self._rados.ObjectNotFound:
            raise FileNotFoundError(errno.ENOENT, f"{self.location}/{parent}: no such directory") from None
        writer = _ObjectWriter(self, obj)
        try:
            yield writer
            final = json.dumps(writer.finish() | {"m": time.time_ns()})
            replaced = self._publish(parent, base, temp, temp_value, final, exclusive)
        except BaseException:
            writer.abandon()
            try:
                self._update(parent, [(temp, temp_value, None)])
            except (_Changed, StoreError):
                pass  # GC sweeps a temporary entry left behind
            raise
        if replaced is not None:
            self._remove_data(replaced)

    def _publish(self, parent: str, base: str, temp: str, temp_value: str, final: str,
                 exclusive: bool) -> str | None:
        """Swap the temporary entry for the final name in one operation; the value it replaced."""
        while True:
            replaced = self._entry(parent, base)
            if replaced is not None and exclusive:
                raise FileExistsError(errno.EEXIST, f"{self.location}/{_join(parent, base)} exists")
            try:
                self._update(parent, [(temp, temp_value, None), (base, replaced or "", final)])
                return replaced
            except _Changed:
                continue

    def _read_file(self, name: str, offset: int, length: int | None) -> bytes:
        """length bytes (None: all) from offset; the entry is looked up again if its object was
        replaced meanwhile."""
        for attempt in range(3):
            with self._objects_lock:
                known = None if attempt else self._objects.get(name)
            if known is None:
                parent, base = _split(name)
                value = self._entry(parent, base)
                entry = None if value is None else json.loads(value)
                if entry is None or entry.get("d"):
                    raise FileNotFoundError(errno.ENOENT, f"{self.location}/{name} does not exist")
                if "i" in entry:
                    data = base64.b64decode(entry["i"])
                    return data[offset:] if length is None else data[offset:offset + length]
                known = (entry["o"], entry["s"])
                self._remember(name, known)
            obj, size = known
            with self._errors(f"read {name}"):
                try:
                    return self._io.read(obj, size if length is None else length, offset)
                except self._rados.ObjectNotFound:
                    continue
        raise FileNotFoundError(errno.ENOENT, f"{self.location}/{name} keeps vanishing while read")

    def _remember(self, name: str, found: tuple[str, int]) -> None:
        # Data objects never change once named, so a remembered one is right or gone (then looked up).
        with self._objects_lock:
            self._objects[name] = found
            if len(self._objects) > _CACHED_OBJECTS:
                self._objects.popitem(last=False)

    def _remove_data(self, value: str) -> None:
        """The data object of a file entry that no name holds any more."""
        obj = json.loads(value).get("o")
        if obj is not None:
            self._remove_object(obj)

    def _entry(self, directory: str, base: str) -> str | None:
        rados = self._rados
        with self._errors(f"look up {_join(directory, base)}"), rados.ReadOpCtx() as op:
            found, _ = self._io.get_omap_vals_by_keys(op, (base,))
            try:
                self._io.operate_read_op(op, _DIR + directory)
            except rados.ObjectNotFound:
                return None
            values = dict(found)
        value = values.get(base)
        return None if value is None else value.decode()

    def _entries(self, directory: str) -> builtins.list[tuple[str, str]]:
        rados = self._rados
        entries: builtins.list[tuple[str, str]] = []
        after = ""
        while True:
            with self._errors(f"list {directory or 'the store'}"), rados.ReadOpCtx() as op:
                page, _ = self._io.get_omap_vals(op, after, "", _OMAP_PAGE)
                try:
                    self._io.operate_read_op(op, _DIR + directory)
                except rados.ObjectNotFound:
                    return entries
                batch = [(key, value.decode()) for key, value in page]
            entries += batch
            if len(batch) < _OMAP_PAGE:
                return entries
            after = batch[-1][0]

    def _update(self, directory: str, changes: builtins.list[tuple[str, str, str | None]]) -> None:
        """One atomic operation on a directory: for each (key, expected, new), the key must hold
        `expected` ("" = absent), then it is set to `new` (None = removed). _Changed if not."""
        rados = self._rados
        with self._errors(f"update directory {directory or 'of the store'}"):
            op = self._io.create_write_op()
            try:
                for key, expected, _ in changes:
                    op.omap_cmp(key, expected, rados.LIBRADOS_CMPXATTR_OP_EQ)
                sets = [(key, new.encode()) for key, _, new in changes if new is not None]
                removals = [key for key, _, new in changes if new is None]
                if sets:
                    self._io.set_omap(op, tuple(k for k, _ in sets), tuple(v for _, v in sets))
                if removals:
                    self._io.remove_omap_keys(op, tuple(removals))
                try:
                    self._io.operate_write_op(op, _DIR + directory)
                except rados.OSError as e:
                    if e.errno == errno.ECANCELED:
                        raise _Changed() from None
                    raise
            finally:
                self._io.release_write_op(op)

    def _remove_object(self, obj: str) -> None:
        with self._errors(f"remove {obj}"):
            try:
                self._io.remove_object(obj)
            except self._rados.ObjectNotFound:
                pass

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Every librados call runs in here: librados' errors become the store's, saying what to
        do (ObjectNotFound is left to the caller), and close() waits for the call to end."""
        rados = self._rados
        with self._idle:
            if self.closed:
                raise StoreError(f"store {self.location} is closed: cannot {doing}")
            self._users += 1
        try:
            yield
        except (rados.ObjectNotFound, _Changed):
            raise
        except rados.Error as e:
            raise self.translate(e, doing) from None
        finally:
            with self._idle:
                self._users -= 1
                self._idle.notify_all()

    def translate(self, e: Exception, doing: str) -> StoreError:
        rados = self._rados
        code = getattr(e, "errno", None)
        pool = self._io.get_pool_name()
        if code in _FULL:
            return StoreFullError(
                f"store {self.location}: cannot {doing}: pool {pool} is full ({os.strerror(code)}). Nothing "
                f"was lost; free space (cairn store prune, then gc), raise the quota (ceph osd pool "
                f"set-quota {pool} max_bytes N) or add capacity, then run again")
        if isinstance(e, rados.PermissionDeniedError | rados.PermissionError):
            return StoreUnreachableError(
                f"store {self.location}: cannot {doing}: the cluster refused ({e}); the client's caps must allow "
                f"rwx on pool {pool} (x for the object locks): ceph auth caps client.NAME mon 'allow r' "
                f"osd 'allow rwx pool={pool}'")
        if isinstance(e, rados.TimedOut | rados.InterruptedOrTimeoutError | rados.ConnectionShutdown):
            return StoreUnreachableError(f"store {self.location}: cannot {doing}: Ceph did not answer in time "
                                         f"({e}); check the cluster (ceph -s) and the network, then run again")
        return StoreError(f"store {self.location}: cannot {doing}: {e}")


class _Changed(Exception):
    """An omap compare failed: the entry changed since we read it."""


class _ObjectWriter:
    """The NewFile a file's bytes are written to: buffered into PART-sized asynchronous writes,
    at most IN_FLIGHT outstanding, so a pack writer's appends are memory copies, not round trips."""

    def __init__(self, backend: RadosBackend, obj: str) -> None:
        self._backend = backend
        self._io = backend._io
        self._obj = obj
        self._buffer = bytearray()
        self._offset = 0
        self._pending: list[Any] = []

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        if len(self._buffer) >= PART:
            self._submit()
        return memoryview(data).nbytes

    def flush(self) -> None:
        """Nothing: the bytes are durable once finish() has returned."""

    def finish(self) -> dict[str, Any]:
        """The file's entry, without its time: {"i": ...} for a small file, else {"o": ...}."""
        if not self._offset and len(self._buffer) <= INLINE:
            return {"i": base64.b64encode(self._buffer).decode(), "s": len(self._buffer)}
        if self._buffer:
            self._submit()
        self._wait(0)
        return {"o": self._obj, "s": self._offset}

    def abandon(self) -> None:
        """Drop what was written; the first error stays the one reported (GC sweeps what remains)."""
        try:
            self._wait(0)
            self._backend._remove_object(self._obj)
        except StoreError:
            pass

    def _submit(self) -> None:
        self._wait(IN_FLIGHT - 1)
        data = bytes(self._buffer)
        self._buffer.clear()
        with self._backend._errors(f"write {self._obj}"):
            self._pending.append(self._io.aio_write(self._obj, data, self._offset))
        self._offset += len(data)

    def _wait(self, keep: int) -> None:
        while len(self._pending) > keep:
            with self._backend._errors(f"write {self._obj}"):
                completion = self._pending.pop(0)
                completion.wait_for_complete()
                result = completion.get_return_value()
                if result < 0:
                    raise self._backend._rados.OSError(f"failed to write {self._obj}", errno=-result)


class RadosLock:
    """A cls_lock on a directory object, named after the entry, kept by a heartbeat until release()."""

    def __init__(self, backend: RadosBackend, obj: str, lock_name: str, path: str) -> None:
        self._backend = backend
        self._obj = obj
        self._name = lock_name
        self._path = path
        self._cookie = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> bool:
        backend = self._backend
        description = json.dumps({"path": self._path, "host": socket.gethostname(), "pid": os.getpid()})
        with backend._errors(f"lock {self._path}"):
            try:
                backend._io.lock_exclusive(self._obj, self._name, self._cookie, description, LOCK_SECONDS)
            except (backend._rados.ObjectBusy, backend._rados.ObjectExists):
                return False
        self._thread = threading.Thread(target=self._run, name=f"cairn-lock-{self._path}", daemon=True)
        self._thread.start()
        backend._locks.add(self)
        return True

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._backend._locks.discard(self)

    def release(self, unlink: bool = False) -> None:
        self.stop_heartbeat()
        backend = self._backend
        if backend.closed:
            return  # disconnected: the lock expires by itself
        if unlink:
            backend.remove(self._path)
            # The lock's record (an xattr of the directory object) goes too: a lease name is used once.
            with backend._errors(f"unlock {self._path}"):
                try:
                    backend._io.rm_xattr(self._obj, f"lock.{self._name}")
                except backend._rados.ObjectNotFound:
                    pass
            return
        with backend._errors(f"unlock {self._path}"):
            try:
                backend._io.unlock(self._obj, self._name, self._cookie)
            except backend._rados.ObjectNotFound:
                pass  # expired and taken meanwhile

    def _run(self) -> None:
        backend = self._backend
        while not self._stop.wait(LOCK_SECONDS / 4):
            try:
                backend._io.lock_exclusive(self._obj, self._name, self._cookie, "", LOCK_SECONDS, _MUST_RENEW)
            except (backend._rados.ObjectNotFound, backend._rados.ObjectBusy):
                self.lost = True  # expired and taken by another: it is theirs now
                return
            except backend._rados.Error:
                pass  # the next beat retries


def _split(name: str) -> tuple[str, str]:
    parent, _, base = name.rpartition("/")
    return parent, base


def _join(directory: str, base: str) -> str:
    return f"{directory}/{base}" if directory else base


def _to_entry(base: str, value: str) -> Entry:
    entry = json.loads(value)
    return Entry(base, entry.get("s", 0), entry["m"], bool(entry.get("d")))
