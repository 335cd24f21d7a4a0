"""Crash-safe file system primitives.

A file written through atomic_file is either absent or complete after a
crash: the data goes to a temporary sibling, is fsync'd, renamed over the
final name, and the directory is fsync'd so the rename itself is durable.
"""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_sibling(path: Path) -> Path:
    """A hidden, unique name next to path; GC recognises the .tmp suffix."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a file that replaces path, durably, only if the block succeeds."""
    tmp = _temp_sibling(path)
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def mkdir_durable(path: Path, exist_ok: bool = False) -> None:
    """mkdir, then fsync the parent so the new entry survives a crash."""
    try:
        path.mkdir()
    except FileExistsError:
        if not exist_ok:
            raise
        return
    fsync_dir(path.parent)
