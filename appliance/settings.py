"""Where an appliance keeps its things: one data directory holds them all."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the store's package is imported when a store is opened, not by every command
    from dedup import SshOptions, Store

from .units import parse_size

DEFAULT_DATA_DIR = Path("/var/lib/cairn")
# What Cairn writes is for its own user alone: files 0600, folders 0700. Every entry point sets
# it first (the `cairn` command's callback), so the processes it starts (QEMU, qemu-img, nbdkit,
# SQLite) inherit it; files holding secrets or VM data also get their mode explicitly.
UMASK = 0o077
PRIVATE_DIR = 0o700
DEFAULT_MAX_UPLOAD = 1 << 40   # 1 TiB


@dataclass(frozen=True)
class StoreAccess:
    location: str
    passphrase: str | None
    key_file: Path | None
    ssh_identity_file: Path | None = None
    ssh_known_hosts: Path | None = None

    @property
    def ssh(self) -> SshOptions:
        from dedup import SshOptions

        return SshOptions(identity_file=self.ssh_identity_file, known_hosts=self.ssh_known_hosts)

    def open(self, passphrase: str | None = None) -> Store:
        from dedup import Store, open_backend

        return Store.open(open_backend(self.location, self.ssh), passphrase=passphrase or self.passphrase,
                          key_file=self.key_file)


def _path_or_none(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    # The catalog's SQLAlchemy URL when not the data dir's SQLite file ($CAIRN_CATALOG_URL).
    catalog: str | None = None
    session_ttl: timedelta = timedelta(hours=12)
    # The largest image upload taken ($CAIRN_MAX_UPLOAD, e.g. "200G"); larger ones are 413.
    max_upload: int = DEFAULT_MAX_UPLOAD

    @classmethod
    def resolve(cls, data_dir: Path | str | None = None, catalog: str | None = None) -> Settings:
        """--data-dir, else $CAIRN_DATA_DIR, else /var/lib/cairn for root or ~/.local/share/cairn."""
        chosen = data_dir or os.environ.get("CAIRN_DATA_DIR")
        if not chosen:
            chosen = DEFAULT_DATA_DIR if os.geteuid() == 0 else Path.home() / ".local/share/cairn"
        max_upload = os.environ.get("CAIRN_MAX_UPLOAD")
        return cls(Path(chosen).expanduser().resolve(), catalog or os.environ.get("CAIRN_CATALOG_URL") or None,
                   max_upload=parse_size(max_upload) if max_upload else DEFAULT_MAX_UPLOAD)

    @property
    def catalog_url(self) -> str:
        return self.catalog or f"sqlite:///{self.data_dir / 'catalog.db'}"

    @property
    def store_dir(self) -> Path:
        return Path(os.environ.get("CAIRN_STORE") or self.data_dir / "store")

    def store_access(self, location: str | None = None) -> StoreAccess:
        """How to open the store: --store, else $CAIRN_STORE (a directory or sftp:// URL), else the data
        dir's; passphrase, key file and SSH credentials from the environment."""
        env = os.environ.get
        return StoreAccess(
            location=location or env("CAIRN_STORE") or str(self.data_dir / "store"),
            passphrase=env("CAIRN_STORE_PASSPHRASE") or None,
            key_file=_path_or_none(env("CAIRN_STORE_KEY_FILE")),
            ssh_identity_file=_path_or_none(env("CAIRN_STORE_SSH_KEY")),
            ssh_known_hosts=_path_or_none(env("CAIRN_STORE_KNOWN_HOSTS")),
        )

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "vms"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "scratch"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def api_socket(self) -> Path:
        """Where `cairn serve` also serves its API, to this machine's administrator only
        (appliance/server/local_socket.py): the local CLI reads through it when it answers."""
        return self.data_dir / "api.sock"

    @property
    def secret_key_file(self) -> Path:
        """The key that seals secrets at rest: whoever has the data dir has it, a catalog dump alone does not."""
        return self.data_dir / "secret.key"

    @property
    def initial_admin_password_file(self) -> Path:
        """Written on first start (mode 0600); the installer's console shows it."""
        return self.data_dir / "initial-admin-password"

    def ensure(self) -> None:
        """The data dir and its folders, the data dir private (tightened if an older one was not)."""
        self.data_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        if self.data_dir.stat().st_mode & 0o077:
            self.data_dir.chmod(PRIVATE_DIR)
        for d in (self.images_dir, self.run_dir, self.scratch_dir):
            d.mkdir(mode=PRIVATE_DIR, exist_ok=True)
