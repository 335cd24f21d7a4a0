"""Wires one appliance together from its settings: catalog, store, driver, services."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dedup import Store, is_remote
from vmm import QemuDriver

from .audit import AuditLog
from .auth import AuthService
from .backups import BackupService
from .catalog import open_catalog
from .events import EventLog
from .host_paths import HostPaths
from .hosts import HostService
from .job_engine import JobEngine
from .job_kinds import standard_kinds
from .restores import RestoreService
from .secrets import SecretBox
from .settings import Settings
from .snapshots import SnapshotService, chain_limit_from_env
from .users import UserService
from .vms import VMService


@dataclass
class Appliance:
    settings: Settings

    @classmethod
    def open(cls, data_dir: str | None = None, catalog_url: str | None = None) -> Appliance:
        settings = Settings.resolve(data_dir, catalog_url)
        settings.ensure()
        appliance = cls(settings)
        _ = appliance.catalog  # upgrades its schema now: a failing migration stops the start, not a request
        return appliance

    @cached_property
    def catalog(self) -> sessionmaker[Session]:
        return open_catalog(self.settings.catalog_url)

    @cached_property
    def secrets(self) -> SecretBox:
        return SecretBox.open(self.settings.secret_key_file)

    @cached_property
    def users(self) -> UserService:
        return UserService(self.catalog, self.secrets)

    @cached_property
    def auth(self) -> AuthService:
        return AuthService(self.catalog, self.users, self.settings.session_ttl)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.catalog)

    @cached_property
    def store(self) -> Store:
        """The store; the data dir's default one is created on first use, others with `cairn store init`.
        An encrypted one opens with $CAIRN_STORE_PASSPHRASE."""
        access = self.settings.store_access()
        path = Path(access.location)
        if not is_remote(access.location) and not (path.exists() and any(path.iterdir())):
            return Store.init(path)
        return access.open()

    @cached_property
    def driver(self) -> QemuDriver:
        return QemuDriver(self.settings.run_dir)

    @cached_property
    def vms(self) -> VMService:
        return VMService(self.settings, self.catalog, self.driver)

    @cached_property
    def host_paths(self) -> HostPaths:
        """The check of every host path a request names (admins only, outside the data dir)."""
        return HostPaths(self.settings.data_dir)

    @cached_property
    def hosts(self) -> HostService:
        return HostService(self.catalog)

    @cached_property
    def backups(self) -> BackupService:
        return BackupService(self.settings, self.catalog, self.driver, self.store)

    @cached_property
    def snapshots(self) -> SnapshotService:
        return SnapshotService(self.catalog, self.vms, chain_limit_from_env())

    @cached_property
    def restores(self) -> RestoreService:
        return RestoreService(self.settings, self.catalog, self.vms, self.store)

    @cached_property
    def jobs(self) -> JobEngine:
        return JobEngine(self.catalog, EventLog(self.catalog), standard_kinds(self))
