"""Wires one appliance together from its settings: catalog, store, driver, services.

Every service is built on first use, and its module imported then: a command that only lists
backups must not pay for QEMU's QMP library, the store's codecs or FastAPI.
"""
from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from appliance.access.audit import AuditLog
    from appliance.access.auth import AuthService
    from appliance.access.host_paths import HostPaths
    from appliance.access.secrets import SecretBox
    from appliance.access.users import UserService
    from appliance.backups.service import BackupService
    from appliance.hosts.service import HostService
    from appliance.jobs.engine import JobEngine
    from appliance.jobs.plan import JobKind
    from appliance.metrics.exposition import Metrics
    from appliance.notifications.service import NotificationService
    from appliance.restores.service import RestoreService
    from appliance.snapshots.service import SnapshotService
    from appliance.vms.service import VMService
    from dedup import Store
    from vmm import QemuDriver


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
        from appliance.catalog.engine import open_catalog

        return open_catalog(self.settings.catalog_url)

    @cached_property
    def secrets(self) -> SecretBox:
        from appliance.access.secrets import SecretBox

        return SecretBox.open(self.settings.secret_key_file)

    @cached_property
    def users(self) -> UserService:
        from appliance.access.users import UserService

        return UserService(self.catalog, self.secrets)

    @cached_property
    def auth(self) -> AuthService:
        from appliance.access.auth import AuthService

        return AuthService(self.catalog, self.users, self.settings.session_ttl)

    @cached_property
    def audit(self) -> AuditLog:
        from appliance.access.audit import AuditLog

        return AuditLog(self.catalog)

    @cached_property
    def store(self) -> Store:
        """The store; the data dir's default one is created on first use, others with `cairn store init`.
        An encrypted one opens with $CAIRN_STORE_PASSPHRASE."""
        from dedup import Store, is_remote

        access = self.settings.store_access()
        path = Path(access.location)
        if not is_remote(access.location) and not (path.exists() and any(path.iterdir())):
            return Store.init(path)
        return access.open()

    @cached_property
    def driver(self) -> QemuDriver:
        from vmm import QemuDriver

        return QemuDriver(self.settings.run_dir)

    @cached_property
    def vms(self) -> VMService:
        from appliance.vms.service import VMService

        return VMService(self.settings, self.catalog, self.driver)

    @cached_property
    def host_paths(self) -> HostPaths:
        """The check of every host path a request names (admins only, outside the data dir)."""
        from appliance.access.host_paths import HostPaths

        return HostPaths(self.settings.data_dir)

    @cached_property
    def hosts(self) -> HostService:
        from appliance.hosts.service import HostService

        return HostService(self.catalog)

    @cached_property
    def backups(self) -> BackupService:
        from appliance.backups.service import BackupService

        return BackupService(self.settings, self.catalog, self.driver, self.store)

    @cached_property
    def snapshots(self) -> SnapshotService:
        from appliance.snapshots.service import SnapshotService, chain_limit_from_env

        return SnapshotService(self.catalog, self.vms, chain_limit_from_env())

    @cached_property
    def restores(self) -> RestoreService:
        from appliance.restores.service import RestoreService

        return RestoreService(self.settings, self.catalog, self.vms, self.store)

    @cached_property
    def jobs(self) -> JobEngine:
        from appliance.jobs.engine import JobEngine
        from appliance.jobs.events import EventLog

        return JobEngine(self.catalog, EventLog(self.catalog), JobKinds(self))

    @cached_property
    def notifications(self) -> NotificationService:
        from appliance.notifications.service import NotificationService

        return NotificationService(self.catalog, self.secrets)

    @cached_property
    def metrics(self) -> Metrics:
        """What GET /metrics renders; it keeps its last measure of the store between scrapes."""
        from appliance.metrics.exposition import Metrics

        return Metrics(self)


class JobKinds(MutableMapping[str, "JobKind[Any]"]):
    """The appliance's job kinds, made when one is first looked up: listing jobs needs none of
    them, and their modules import the store's, QEMU's and the transports' machinery."""

    def __init__(self, appliance: Appliance):
        self.appliance = appliance

    @cached_property
    def standard(self) -> dict[str, JobKind[Any]]:
        from appliance.jobs.kinds import standard_kinds

        return standard_kinds(self.appliance)

    def __getitem__(self, kind: str) -> JobKind[Any]:
        return self.standard[kind]

    def __setitem__(self, kind: str, job_kind: JobKind[Any]) -> None:
        self.standard[kind] = job_kind

    def __delitem__(self, kind: str) -> None:
        del self.standard[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self.standard)

    def __len__(self) -> int:
        return len(self.standard)
