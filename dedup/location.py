"""A store's location: a directory path or sftp://[user@]host[:port]/absolute/path."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .backend import Backend
from .errors import StoreLocationError
from .local import LocalBackend
from .sftp import SftpBackend, SshOptions

SFTP_SCHEME = "sftp"


def is_remote(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def open_backend(location: str | os.PathLike[str] | Backend, ssh: SshOptions | None = None) -> Backend:
    """The backend for a location; an already open backend is passed through."""
    if not isinstance(location, (str, os.PathLike)):
        return location
    text = str(location)
    if not is_remote(text):
        return LocalBackend(Path(text).expanduser().absolute())
    parts = urlsplit(text)
    if parts.scheme != SFTP_SCHEME:
        raise StoreLocationError(f"store location {text!r}: only directories and sftp:// URLs are supported")
    try:
        port = parts.port or 22
    except ValueError as e:
        raise StoreLocationError(f"store location {text!r}: {e}") from None
    path = unquote(parts.path)
    if not parts.hostname or not path.startswith("/") or path == "/" or parts.query or parts.fragment:
        raise StoreLocationError(
            f"store location {text!r} is not sftp://[user@]host[:port]/absolute/path to the store's directory"
        )
    user = unquote(parts.username) if parts.username else getpass.getuser()
    return SftpBackend.connect(user, parts.hostname, port, path.rstrip("/"), ssh or SshOptions())
