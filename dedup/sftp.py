"""The SFTP backend: a store on a remote backup server, through paramiko.

Writes go to a temporary sibling, are made durable with OpenSSH's
fsync@openssh.com extension and renamed over the final name with its
posix-rename extension, so files are whole or absent as in a local store.
paramiko has no call for fsync, so it is sent as a raw extended request.

Times: file times travel in whole seconds, and SFTP can only set a time,
not "now". The server's clock is therefore measured once per connection
(the mtime of a file it creates against our clock) and touches are
stamped with our clock corrected by that offset. Its error, up to about two
seconds, is published as clock_error_ns, which GC subtracts from its cutoff.

Locks: SFTP has no flock. A lock is a lease file whose atime a heartbeat
thread sets to now every LEASE_TTL/4; a lease whose atime is older than
LEASE_TTL belongs to a dead holder and is free (release without unlink
sets the atime to 0). The mtime is left alone, so a writer lease's mtime
still says when the backup started (leases.py). Two processes taking over
the same dead lease within the same moment could both succeed; writers
never do (their leases are created exclusively), only GC takes over.

Requests run on a small pool of SFTP channels over one SSH connection:
the pool keeps parallel chunk writes and reads concurrent without opening
more sessions than OpenSSH allows per connection (MaxSessions, 10).
"""

from __future__ import annotations

import errno
import queue
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.sftp import CMD_EXTENDED

from .backend import Entry, NewFile
from .errors import StoreError, StoreUnreachableError

LEASE_TTL = 120.0
CHANNELS = 4
CLOCK_ERROR_NS = 2_000_000_000
_SECOND = 1_000_000_000


@dataclass(frozen=True)
class SshOptions:
    """How to reach the server; None means OpenSSH's defaults (~/.ssh keys, agent, known_hosts)."""

    identity_file: Path | None = None
    known_hosts: Path | None = None
    timeout: float = 20.0


class SftpBackend:
    clock_error_ns = CLOCK_ERROR_NS

    def __init__(self, client: paramiko.SSHClient, location: str, root: str, lease_ttl: float = LEASE_TTL) -> None:
        self.location = location
        self.lease_ttl = lease_ttl
        self._ssh = client
        self._root = root
        self._channels: queue.Queue[paramiko.SFTPClient] = queue.Queue()
        self._opened = 0
        self._opening = threading.Lock()
        self._offset_ns: int | None = None
        self.closed = False

    @classmethod
    def connect(cls, user: str, host: str, port: int, root: str, options: SshOptions) -> SftpBackend:
        location = f"sftp://{user}@{host}:{port}{root}"
        client = paramiko.SSHClient()
        try:
            if options.known_hosts is not None:
                client.load_host_keys(str(options.known_hosts))
            else:
                client.load_system_host_keys()
            # An unknown server is refused, never trusted on first use: it would receive the backups.
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(
                host,
                port=port,
                username=user,
                key_filename=str(options.identity_file) if options.identity_file else None,
                look_for_keys=options.identity_file is None,
                allow_agent=options.identity_file is None,
                timeout=options.timeout,
                banner_timeout=options.timeout,
                auth_timeout=options.timeout,
            )
        except (paramiko.SSHException, OSError) as e:
            client.close()
            raise StoreUnreachableError(f"cannot reach store {location}: {type(e).__name__}: {e}") from e
        return cls(client, location, root)

    # --- files ---------------------------------------------------------------

    def create_root(self) -> None:
        with self._channel() as sftp:
            path = ""
            for part in self._root.strip("/").split("/"):
                path += "/" + part
                _mkdir(sftp, path)

    def read(self, name: str) -> bytes:
        with self._channel() as sftp, sftp.open(self._path(name), "rb") as f:
            f.prefetch()
            return f.read()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self._channel() as sftp, sftp.open(self._path(name), "rb") as f:
            # readv pipelines the requests; a plain read would wait out a round trip per 32 KiB.
            return b"".join(f.readv([(offset, length)])) if length else b""

    @contextmanager
    def atomic_writer(self, name: str) -> Iterator[NewFile]:
        final = self._path(name)
        directory, _, base = final.rpartition("/")
        temp = f"{directory}/.{base}.{secrets.token_hex(4)}.tmp"
        with self._channel() as sftp:
            f = sftp.open(temp, "wb")
            try:
                f.set_pipelined(True)
                yield f
                f.flush()
                # The server handles one channel's requests in order: this follows the writes.
                sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)
                f.close()
                sftp.posix_rename(temp, final)
            except BaseException:
                # The first error is the one to report; closing a failed write may fail again.
                with suppress(OSError, paramiko.SSHException):
                    f.close()
                with suppress(OSError, paramiko.SSHException):
                    _ignore_missing(sftp.remove, temp)
                raise

    def make_dir(self, name: str) -> None:
        with self._channel() as sftp:
            _mkdir(sftp, self._path(name))

    def stat(self, name: str) -> Entry | None:
        with self._channel() as sftp:
            try:
                attrs = sftp.stat(self._path(name))
            except FileNotFoundError:
                return None
        return _entry(name.rsplit("/", 1)[-1], attrs)

    def list(self, name: str) -> list[Entry]:
        with self._channel() as sftp:
            try:
                return [_entry(a.filename, a) for a in sftp.listdir_attr(self._path(name))]
            except FileNotFoundError:
                return []

    def touch(self, name: str) -> bool:
        now = self.now_ns() // _SECOND
        with self._channel() as sftp:
            try:
                sftp.utime(self._path(name), (now, now))
            except FileNotFoundError:
                return False
        return True

    def rename(self, source: str, target: str) -> None:
        with self._channel() as sftp:
            sftp.posix_rename(self._path(source), self._path(target))

    def remove(self, name: str) -> None:
        with self._channel() as sftp:
            _ignore_missing(sftp.remove, self._path(name))

    def remove_tree(self, name: str) -> None:
        with self._channel() as sftp:
            _remove_tree(sftp, self._path(name))

    # --- locks ---------------------------------------------------------------

    def try_lock(self, name: str, create: bool = True) -> LeaseLock | None:
        # Taken before the channel: measuring the clock the first time needs one of its own.
        stale_before = self.now_ns() - int(self.lease_ttl * _SECOND)
        with self._channel() as sftp:
            path = self._path(name)
            try:
                attrs = sftp.stat(path)
            except FileNotFoundError:
                if not create or not _create_exclusive(sftp, path, b""):
                    return None
                attrs = sftp.stat(path)
            else:
                if (attrs.st_atime or 0) * _SECOND >= stale_before:
                    return None  # its holder's heartbeat is recent
        return LeaseLock(self, name, attrs.st_mtime)

    def create_lock(self, name: str, content: bytes) -> LeaseLock:
        with self._channel() as sftp:
            path = self._path(name)
            if not _create_exclusive(sftp, path, content):
                raise FileExistsError(errno.EEXIST, f"{self.location}/{name} exists")
            mtime = sftp.stat(path).st_mtime
        return LeaseLock(self, name, mtime)

    def set_atime(self, name: str, atime: int, mtime: int) -> None:
        with self._channel() as sftp:
            sftp.utime(self._path(name), (atime, mtime))

    def now_ns(self) -> int:
        """Now on the server's clock, as measured once per connection."""
        if self._offset_ns is None:
            self._offset_ns = self._measure_offset()
        return time.time_ns() + self._offset_ns

    def close(self) -> None:
        self.closed = True
        self._ssh.close()

    # --- internals -------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"{self._root}/{name}" if name else self._root

    @contextmanager
    def _channel(self) -> Iterator[paramiko.SFTPClient]:
        try:
            sftp = self._channels.get_nowait()
        except queue.Empty:
            sftp = self._open_or_wait()
        try:
            yield sftp
        finally:
            self._channels.put(sftp)

    def _open_or_wait(self) -> paramiko.SFTPClient:
        with self._opening:
            opening = self._opened < CHANNELS
            if opening:
                self._opened += 1
        if not opening:
            return self._channels.get()
        try:
            return self._ssh.open_sftp()
        except (paramiko.SSHException, OSError) as e:
            with self._opening:
                self._opened -= 1
            raise StoreUnreachableError(f"store {self.location}: cannot open an SFTP channel: {e}") from e

    def _measure_offset(self) -> int:
        probe = self._path(f".clock.{secrets.token_hex(4)}.tmp")
        with self._channel() as sftp:
            before = time.time_ns()
            with sftp.open(probe, "wb"):
                pass
            try:
                server_seconds = sftp.stat(probe).st_mtime
            finally:
                _ignore_missing(sftp.remove, probe)
        # The server truncates to whole seconds: its "now" was up to 1 s past what it wrote.
        return server_seconds * _SECOND + _SECOND // 2 - before


class LeaseLock:
    """A held SFTP lease: a heartbeat keeps its atime fresh until release()."""

    def __init__(self, backend: SftpBackend, name: str, mtime: int) -> None:
        self._backend = backend
        self._name = name
        self._mtime = mtime
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name=f"cairn-lease-{name}", daemon=True)
        self._thread.start()

    def release(self, unlink: bool = False) -> None:
        self._stop.set()
        self._thread.join()
        if unlink:
            self._backend.remove(self._name)
        else:
            try:
                self._backend.set_atime(self._name, 0, self._mtime)
            except FileNotFoundError:
                pass

    def _beat(self) -> None:
        self._backend.set_atime(self._name, self._backend.now_ns() // _SECOND, self._mtime)

    def _run(self) -> None:
        # A closed backend ends the heartbeat: the lease then goes stale, as if its holder had died.
        while not self._stop.wait(self._backend.lease_ttl / 4) and not self._backend.closed:
            try:
                self._beat()
            except (OSError, paramiko.SSHException, StoreError):
                pass  # the next beat retries; a lease lost meanwhile ends the holder's backup at commit


def _entry(name: str, attrs: paramiko.SFTPAttributes) -> Entry:
    return Entry(name, attrs.st_size or 0, (attrs.st_mtime or 0) * _SECOND, stat.S_ISDIR(attrs.st_mode or 0))


def _mkdir(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.mkdir(path)
    except OSError:
        # SFTP v3 reports an existing directory as a plain failure.
        if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
            raise


def _create_exclusive(sftp: paramiko.SFTPClient, path: str, content: bytes) -> bool:
    """Create path with content; False if it already exists."""
    try:
        f = sftp.open(path, "wx")
    except OSError:
        # SFTP v3 has no "exists" status: look (FileNotFoundError if the directory is missing).
        sftp.stat(path)
        return False
    with f:
        f.write(content)
    return True


def _remove_tree(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        entries = sftp.listdir_attr(path)
    except FileNotFoundError:
        return
    for a in entries:
        child = f"{path}/{a.filename}"
        if stat.S_ISDIR(a.st_mode or 0):
            _remove_tree(sftp, child)
        else:
            _ignore_missing(sftp.remove, child)
    _ignore_missing(sftp.rmdir, path)


def _ignore_missing(operation: Callable[[str], object], path: str) -> None:
    try:
        operation(path)
    except FileNotFoundError:
        pass
