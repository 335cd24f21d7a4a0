"""Defining, running and removing VMs: the catalog keeps the definition, vmm runs it."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vmm import DiskSpec, QemuDriver, VMSpec, VMStatus, create_disk

from .catalog import SnapshotTreeRecord, VMRecord
from .errors import ConflictError, NotFoundError
from .settings import Settings

DISK_NAMES = [f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


@dataclass
class VMView:
    spec: VMSpec
    status: VMStatus

    def to_dict(self) -> dict:
        return {**self.spec.to_dict(), "state": self.status.state, "pid": self.status.pid}


class VMService:
    def __init__(self, settings: Settings, catalog: sessionmaker[Session], driver: QemuDriver):
        self.settings = settings
        self.catalog = catalog
        self.driver = driver

    def create(self, name: str, disk_sizes: list[int], memory_mib: int = 256, vcpus: int = 1,
               kernel: str | None = None, initrd: str | None = None, append: str | None = None,
               base_image: str | None = None) -> VMSpec:
        """A new VM with blank qcow2 disks (the first one an overlay on `base_image` if given)."""
        if not disk_sizes and not base_image:
            raise ConflictError("a VM needs at least one disk (--disk SIZE or --image PATH)")
        with self.catalog() as s:
            if s.get(VMRecord, name):
                raise ConflictError(f"VM {name} already exists")
        for path in (kernel, initrd, base_image):
            if path and not Path(path).is_file():
                raise NotFoundError(f"{path} does not exist")
        folder = self.settings.images_dir / name
        disks = [DiskSpec(DISK_NAMES[i], str(folder / f"{DISK_NAMES[i]}.qcow2"))
                 for i in range(max(len(disk_sizes), 1 if base_image else 0))]
        spec = VMSpec(name=name, memory_mib=memory_mib, vcpus=vcpus, disks=disks,
                      kernel=kernel and str(Path(kernel).resolve()), initrd=initrd and str(Path(initrd).resolve()),
                      append=append)
        spec.validate()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for i, disk in enumerate(disks):
                backing = str(Path(base_image).resolve()) if base_image and i == 0 else None
                create_disk(disk.path, disk_sizes[i] if i < len(disk_sizes) else None, backing=backing)
            with self.catalog.begin() as s:
                s.add(VMRecord(name=name, spec=spec.to_dict()))
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return spec

    def spec(self, name: str) -> VMSpec:
        with self.catalog() as s:
            rec = s.get(VMRecord, name)
            if rec is None:
                raise NotFoundError(f"no VM named {name}")
            return VMSpec.from_dict(rec.spec)

    @staticmethod
    def point_disks(session: Session, name: str, paths: dict[str, str]) -> None:
        """From its next start the VM opens these files (snapshots move a disk's active layer)."""
        rec = session.get(VMRecord, name)
        spec = VMSpec.from_dict(rec.spec)
        for disk in spec.disks:
            disk.path = paths.get(disk.name, disk.path)
        rec.spec = spec.to_dict()

    def show(self, name: str) -> VMView:
        return VMView(self.spec(name), self.driver.status(name))

    def list(self) -> list[VMView]:
        with self.catalog() as s:
            specs = [VMSpec.from_dict(r.spec) for r in s.scalars(select(VMRecord).order_by(VMRecord.name))]
        return [VMView(spec, self.driver.status(spec.name)) for spec in specs]

    async def start(self, name: str) -> VMView:
        spec = self.spec(name)
        return VMView(spec, await self.driver.start(spec))

    async def stop(self, name: str, timeout: float = 30.0, force: bool = False) -> VMView:
        spec = self.spec(name)
        await self.driver.stop(name, timeout=timeout, force=force)
        return VMView(spec, self.driver.status(name))

    def delete(self, name: str) -> None:
        """Removes the VM and its disks; its backups stay in the store."""
        view = self.show(name)
        if view.status.state in ("running", "paused"):
            raise ConflictError(f"VM {name} is {view.status.state}; stop it first")
        with self.catalog.begin() as s:
            s.delete(s.get(VMRecord, name))
            if tree := s.get(SnapshotTreeRecord, name):
                s.delete(tree)
        shutil.rmtree(self.settings.images_dir / name, ignore_errors=True)
        self.driver.forget(name)
