"""Paths of the appliance's own host named in a request: who may name one, and what it may be.

Operators and viewers work only with what is inside the appliance: library images and uploads,
VMs and backups, all by name. A request field that names a file, a device or a folder of the
host (an image to import, a kernel, a restore target, a storage pool, a host's key file) is an
admin's, and even an admin's path is checked before it is used:
  - absolute, and resolved through every symlink on the way, so what is checked is what is used
    (a symlink in /tmp to the catalog is the catalog);
  - outside the data dir: the catalog (password hashes), secret.key, the TLS key, the store and
    the VMs' disks belong to the appliance and are reached through its API, never as a path;
  - of the kind the field expects: a regular file to read, a folder, or something to write a
    disk into (a new or regular file, a block device).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import CairnError, ForbiddenError

from .auth import Principal
from .roles import Role


class HostPathError(CairnError):
    """An admin named a host path that may not be used for this."""


@dataclass(frozen=True)
class HostPaths:
    data_dir: Path

    def readable_file(self, who: Principal, path: str, what: str) -> Path:
        """A regular file to read (an image to import, a kernel), as its resolved path."""
        real = self._resolved(who, path, what)
        if not real.is_file():
            raise HostPathError(f"{what} {path} is not a regular file")
        return real

    def folder(self, who: Principal, path: str, what: str) -> Path:
        real = self._resolved(who, path, what)
        if not real.is_dir():
            raise HostPathError(f"{what} {path} is not a folder")
        return real

    def disk_target(self, who: Principal, path: str, what: str) -> Path:
        """Somewhere to write a disk's bytes: a new file in an existing folder, an existing
        regular file or a block device. The last component may not be a symlink: it would be
        followed by the writer, and the link (not its target) is what the admin sees."""
        real = self._resolved(who, path, what)
        if Path(path).is_symlink():
            raise HostPathError(f"{what} {path} is a symlink: name the file or device itself")
        if real.exists():
            mode = real.stat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise HostPathError(f"{what} {path} is neither a regular file nor a block device")
        elif not real.parent.is_dir():
            raise HostPathError(f"{what} {path}: folder {real.parent} does not exist")
        return real

    def _resolved(self, who: Principal, path: str, what: str) -> Path:
        if who.role != Role.ADMIN:
            raise ForbiddenError(f"{who.name} is a {who.role.value}: only an admin may name a path on the "
                                 f"appliance's host ({what}); use what the appliance holds, such as an "
                                 "image uploaded to the library (PUT /api/v1/images/{name})")
        if "\0" in path or not os.path.isabs(path):
            raise HostPathError(f"{what} {path!r} must be an absolute path")
        real = Path(os.path.realpath(path))
        data_dir = Path(os.path.realpath(self.data_dir))
        if real == data_dir or data_dir in real.parents:
            raise HostPathError(f"{what} {path} is inside the appliance's data dir {data_dir}: its files are "
                                "reached through the API (images, VMs, backups), not by path")
        return real
