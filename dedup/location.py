"""A store's location: a directory path, or a URL naming a remote store.

    /srv/cairn/store                                        a directory (local, NFS, ...)
    sftp://[user@]host[:port]/absolute/path                 a directory on an SSH server
    rados://POOL[/NAMESPACE][?conf=PATH&id=USER&keyring=PATH&timeout=SECONDS]
                                                            a Ceph pool (namespace), librados
    s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&profile=NAME&lock=compliance]
                                                            an S3 bucket (AWS, radosgw, MinIO...)

Secrets never appear in a location: SSH keys come from SshOptions, the Ceph key from the
keyring the configuration (or keyring=) names, S3 credentials from the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a profile of ~/.aws/credentials).
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from .backend import Backend
from .errors import StoreLocationError
from .local import LocalBackend
from .rados import DEFAULT_TIMEOUT, RadosBackend, RadosOptions
from .s3 import S3Backend, S3Options
from .sftp import SftpBackend, SshOptions

SFTP_SCHEME = "sftp"
RADOS_SCHEME = "rados"
S3_SCHEME = "s3"
SCHEMES = (SFTP_SCHEME, RADOS_SCHEME, S3_SCHEME)


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
    if parts.scheme == RADOS_SCHEME:
        return _open_rados(text, parts)
    if parts.scheme == S3_SCHEME:
        return _open_s3(text, parts)
    if parts.scheme != SFTP_SCHEME:
        raise StoreLocationError(f"store location {text!r}: a store is a directory or a {', '.join(SCHEMES)} URL")
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


def _open_rados(text: str, parts: SplitResult) -> Backend:
    query = _query(text, parts, ("conf", "id", "keyring", "timeout"))
    pool = unquote(parts.netloc)
    if not pool or "@" in pool or parts.fragment:
        raise StoreLocationError(f"store location {text!r} is not rados://POOL[/NAMESPACE][?conf=PATH&id=USER]")
    try:
        timeout = float(query.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise StoreLocationError(f"store location {text!r}: timeout must be a number of seconds") from None
    options = RadosOptions(conf=query.get("conf"), client=query.get("id"), keyring=query.get("keyring"),
                           timeout=timeout)
    return RadosBackend.connect(pool, unquote(parts.path).strip("/"), options)


def _open_s3(text: str, parts: SplitResult) -> Backend:
    query = _query(text, parts, ("endpoint", "region", "profile", "lock"))
    bucket = parts.netloc
    if not bucket or "@" in bucket or ":" in bucket or parts.fragment:
        raise StoreLocationError(f"store location {text!r} is not s3://BUCKET[/PREFIX][?endpoint=URL] "
                                 "(credentials come from the environment, never the URL)")
    lock = query.get("lock")
    if lock not in (None, "compliance"):
        raise StoreLocationError(f"store location {text!r}: lock={lock} is not a mode Cairn uses (lock=compliance)")
    options = S3Options(endpoint=query.get("endpoint"), region=query.get("region"), profile=query.get("profile"),
                        object_lock=lock is not None)
    return S3Backend.connect(bucket, unquote(parts.path).strip("/"), options)


def _query(text: str, parts: SplitResult, allowed: tuple[str, ...]) -> dict[str, str]:
    try:
        query = parse_qs(parts.query, strict_parsing=bool(parts.query), keep_blank_values=False)
    except ValueError:
        raise StoreLocationError(f"store location {text!r}: its query is not name=value&...") from None
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise StoreLocationError(f"store location {text!r}: unknown parameter(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(allowed)})")
    if any(len(values) > 1 for values in query.values()):
        raise StoreLocationError(f"store location {text!r}: a parameter is given twice")
    return {name: values[0] for name, values in query.items()}
