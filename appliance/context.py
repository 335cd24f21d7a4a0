"""Wires one appliance together from its settings: catalog, store, driver, services."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.orm import Session, sessionmaker

from dedup import Store
from vmm import QemuDriver

from .backups import BackupService
from .catalog import open_catalog
from .settings import Settings
from .snapshots import SnapshotService, chain_limit_from_env
from .vms import VMService


@dataclass
class Appliance:
    settings: Settings

    @classmethod
    def open(cls, data_dir: str | None = None) -> "Appliance":
        settings = Settings.resolve(data_dir)
        settings.ensure()
        return cls(settings)

    @cached_property
    def catalog(self) -> sessionmaker[Session]:
        return open_catalog(self.settings.catalog_url)

    @cached_property
    def store(self) -> Store:
        path = self.settings.store_dir
        if (path / "config.json").exists() or (path.exists() and any(path.iterdir())):
            return Store.open(path)
        return Store.init(path)

    @cached_property
    def driver(self) -> QemuDriver:
        return QemuDriver(self.settings.run_dir)

    @cached_property
    def vms(self) -> VMService:
        return VMService(self.settings, self.catalog, self.driver)

    @cached_property
    def backups(self) -> BackupService:
        return BackupService(self.settings, self.catalog, self.driver, self.store)

    @cached_property
    def snapshots(self) -> SnapshotService:
        return SnapshotService(self.catalog, self.vms, chain_limit_from_env())
