"""Restoring to a raw image file on another host over SSH (SFTP, with paramiko).

The file is built under a hidden partial name, truncated to size first so it
stays sparse where the disk holds zeros, and renamed (posix-rename) only when
complete. The host key must be known: an unknown host is refused, never
trusted on first use.
"""

from __future__ import annotations

import errno
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import paramiko

from .errors import (
    RestoreError,
    TargetDirectoryError,
    TargetExistsError,
    TargetWriteError,
)

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts").expanduser()


@dataclass(frozen=True)
class SshLocation:
    host: str
    port: int
    user: str | None
    path: PurePosixPath

    @classmethod
    def parse(cls, url: str) -> SshLocation:
        parts = urlsplit(url)
        if parts.scheme not in ("ssh", "sftp") or not parts.hostname or not parts.path.startswith("/"):
            raise RestoreError(f"{url!r} is not an ssh://[user@]host[:port]/absolute/path URL")
        path = PurePosixPath(unquote(parts.path))
        if path.name in ("", ".", ".."):
            raise RestoreError(f"{url!r} names no file")
        return cls(parts.hostname, parts.port or 22, parts.username, path)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"ssh://{user}{self.host}:{self.port}{self.path}"


class SftpTarget:
    """Writes one remote file through an open SFTP session."""

    concurrent_writes = 1  # seek, then write

    def __init__(self, file: paramiko.SFTPFile, where: str) -> None:
        self._file = file
        self._where = where

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        try:
            self._file.seek(offset)
            self._file.write(bytes(data))
        except OSError as e:
            raise TargetWriteError(f"writing {self._where} failed: {e}") from e

    def zero_at(self, offset: int, length: int) -> None:
        """Nothing to do: the file was created empty and truncated to size (one hole)."""

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            self._file.flush()
            self._file.seek(offset)
            return self._file.read(length)
        except OSError as e:
            raise TargetWriteError(f"reading back {self._where} failed: {e}") from e

    def finish(self) -> None:
        try:
            # close() waits for every pipelined write's status.
            self._file.close()
        except OSError as e:
            raise TargetWriteError(f"finishing {self._where} failed: {e}") from e

    def abort(self) -> None:
        with suppress(OSError, paramiko.SSHException):
            self._file.close()


class SftpDestination:
    def __init__(self, location: SshLocation, force: bool, key_file: Path | None, known_hosts: Path | None) -> None:
        self.location = location
        self.force = force
        self.description = str(location)
        self._key_file = key_file
        self._known_hosts = known_hosts
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._partial = location.path.with_name(f".{location.path.name}.cairn-partial")

    @classmethod
    def from_url(cls, url: str, force: bool, key_file: Path | None = None,
                 known_hosts: Path | None = None) -> SftpDestination:
        return cls(SshLocation.parse(url), force, key_file, known_hosts)

    def open(self, size: int) -> SftpTarget:
        sftp = self._connect()
        path, where = str(self.location.path), str(self.location)
        if not _exists(sftp, str(self.location.path.parent)):
            raise TargetDirectoryError(f"cannot restore to {where}: directory {self.location.path.parent} "
                                       "does not exist")
        if _exists(sftp, path) and not self.force:
            raise TargetExistsError(f"{where} already exists; restore with --force (the API's force) to replace it")
        try:
            file = sftp.open(str(self._partial), "w+")
            file.truncate(size)
            # Writes are sent without waiting for each reply; close() collects them.
            file.set_pipelined(True)
        except OSError as e:
            raise TargetWriteError(f"cannot create {self._partial} on {self.location.host}: {e}") from e
        return SftpTarget(file, where)

    def commit(self) -> None:
        assert self._sftp is not None
        try:
            self._sftp.posix_rename(str(self._partial), str(self.location.path))
        except OSError as e:
            raise TargetWriteError(f"renaming the restored file to {self.location} failed: {e}") from e
        finally:
            self._close()

    def discard(self) -> None:
        if self._sftp is not None:
            with suppress(OSError, paramiko.SSHException):
                self._sftp.remove(str(self._partial))
        self._close()

    def _connect(self) -> paramiko.SFTPClient:
        client = paramiko.SSHClient()
        known_hosts = self._known_hosts or DEFAULT_KNOWN_HOSTS
        try:
            client.load_host_keys(str(known_hosts))
        except FileNotFoundError:
            raise RestoreError(f"known hosts file {known_hosts} does not exist; the host key of "
                               f"{self.location.host} must be known") from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.location.host, port=self.location.port, username=self.location.user,
                           key_filename=str(self._key_file) if self._key_file else None,
                           allow_agent=self._key_file is None, look_for_keys=self._key_file is None, timeout=30)
        except (paramiko.SSHException, OSError) as e:
            client.close()
            raise TargetWriteError(f"cannot connect to {self.location}: {e}") from e
        self._client = client
        self._sftp = client.open_sftp()
        return self._sftp

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = self._sftp = None


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT or isinstance(e, FileNotFoundError):
            return False
        raise
    return True
