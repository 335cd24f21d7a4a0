"""Hosts besides the appliance's own: registered in the catalog, reached on each call.

- `libvirt`: a libvirt connection URI; its domains stay libvirt's (Cairn lists, starts, stops,
  snapshots and backs them up, and never redefines them).
- `ssh`: `ssh://user@host:port`, reached with paramiko; registering it installs Cairn's agent
  there (vmm/remote.py), which runs QEMU as the appliance does locally.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import CairnError, ConflictError, NotFoundError
from appliance.names import VM_LIKE
from appliance.vms.records import VMRecord
from vmm.hosts import (
    HostDriver,
    HostError,
    HostVM,
    HostVMNotFoundError,
    HostVMStateError,
)
from vmm.hosts import HostUnreachableError as _Unreachable
from vmm.libvirt_host import LibvirtHost
from vmm.placement import LOCAL_HOST
from vmm.remote import CONNECT_TIMEOUT, RemoteHost, SshTarget

from .records import HostRecord

HostKind = Literal["libvirt", "ssh"]
HOST_KINDS: tuple[str, ...] = get_args(HostKind)
# libvirt: known_hosts serves backups of a qemu+ssh:// host, whose export is read through SSH;
# scratch_dir (a directory on the host its QEMU can write to) replaces the domain's own directory
# for the export's socket and scratch files; libvirt_dir says where this machine sees a local
# libvirtd's /var/lib/libvirt (backups/libvirt.py).
HOST_OPTIONS = {"libvirt": ("known_hosts", "scratch_dir", "libvirt_dir"), "ssh": ("key_file", "known_hosts", "agent_dir")}
DEFAULT_AGENT_DIR = "/var/lib/cairn-agent"


class HostSpecError(CairnError, ValueError):
    """A host definition that cannot be right (its name, kind or URI)."""
    status = 422


class HostUnreachableError(CairnError):
    """The host did not answer (or refused the connection)."""
    status = 502


class HostCommandError(CairnError):
    """The host answered, and refused what was asked."""
    status = 400


@dataclass(frozen=True)
class HostView:
    name: str
    kind: str
    uri: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "uri": self.uri, "options": dict(self.options)}


@contextmanager
def host_errors() -> Iterator[None]:
    """vmm's host errors as the appliance's: not found, conflict, unreachable, refused."""
    try:
        yield
    except HostVMNotFoundError as e:
        raise NotFoundError(str(e)) from e
    except HostVMStateError as e:
        raise ConflictError(str(e)) from e
    except _Unreachable as e:
        raise HostUnreachableError(str(e)) from e
    except HostError as e:
        raise HostCommandError(str(e)) from e


def _ssh_target(uri: str, options: dict[str, Any]) -> SshTarget:
    parts = urlsplit(uri)
    try:
        port = parts.port or 22
    except ValueError as e:
        raise HostSpecError(f"bad port in {uri!r}: {e}") from e
    if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
        raise HostSpecError(f"an ssh host's URI is ssh://user@host[:port], not {uri!r}")
    return SshTarget(parts.hostname, port, parts.username or "root", options.get("key_file"),
                     options.get("known_hosts"))


def _driver(view: HostView, connect_timeout: float = CONNECT_TIMEOUT) -> HostDriver:
    if view.kind == "libvirt":
        return LibvirtHost(view.uri)
    return RemoteHost(_ssh_target(view.uri, view.options), view.options.get("agent_dir", DEFAULT_AGENT_DIR),
                      connect_timeout)


def _view(rec: HostRecord) -> HostView:
    return HostView(rec.name, rec.kind, rec.uri, dict(rec.options or {}))


class HostService:
    def __init__(self, catalog: sessionmaker[Session]):
        self.catalog = catalog

    def add(self, name: str, uri: str, kind: str = "libvirt", key_file: str | None = None,
            known_hosts: str | None = None, agent_dir: str | None = None,
            scratch_dir: str | None = None, libvirt_dir: str | None = None) -> HostView:
        """Register a host once it has answered (an ssh host gets the agent installed first): a
        typo is caught now, not at the first backup."""
        VM_LIKE.check("host", name, HostSpecError)
        if name == LOCAL_HOST:
            raise HostSpecError(f"invalid host name {name!r}: {LOCAL_HOST!r} is the appliance itself")
        if kind not in HOST_KINDS:
            raise HostSpecError(f"host kind {kind!r} is not one of {', '.join(HOST_KINDS)}")
        if not uri or not isinstance(uri, str):
            raise HostSpecError("a host needs its URI: qemu:///system (libvirt) or ssh://root@kvm1 (ssh)")
        options = {k: v for k, v in (("key_file", key_file), ("known_hosts", known_hosts), ("agent_dir", agent_dir),
                                     ("scratch_dir", scratch_dir), ("libvirt_dir", libvirt_dir)) if v}
        foreign = sorted(set(options) - set(HOST_OPTIONS[kind]))
        if foreign:
            raise HostSpecError(f"{', '.join(foreign)} do not apply to {kind} hosts (they take "
                                f"{', '.join(HOST_OPTIONS[kind])})")
        view = HostView(name, kind, uri, options)
        with self.catalog() as s:
            if s.get(HostRecord, name):
                raise ConflictError(f"host {name} already exists")
        with host_errors():
            _driver(view).check()
        with self.catalog.begin() as s:
            if s.get(HostRecord, name):
                raise ConflictError(f"host {name} already exists")
            s.add(HostRecord(name=name, kind=kind, uri=uri, options=options))
        return view

    def get(self, name: str) -> HostView:
        with self.catalog() as s:
            rec = s.get(HostRecord, name)
            if rec is None:
                raise NotFoundError(f"no host {name}")
            return _view(rec)

    def remove(self, name: str) -> None:
        """Forget the host; its VMs and their backups stay where they are. Cairn's own VMs must
        not be meant to run there; those that last ran there start wherever placement puts them."""
        with self.catalog.begin() as s:
            rec = s.get(HostRecord, name)
            if rec is None:
                raise NotFoundError(f"no host {name}")
            ours = select(VMRecord).where(VMRecord.host == name)
            if running := sorted(vm.name for vm in s.scalars(ours.where(VMRecord.should_run.is_(True)))):
                raise ConflictError(f"host {name} runs Cairn's VMs {', '.join(running)}: migrate or stop them "
                                    "first")
            s.execute(update(VMRecord).where(VMRecord.host == name).values(host=LOCAL_HOST))
            s.delete(rec)

    def libvirt(self, name: str) -> LibvirtHost:
        return LibvirtHost(self._of_kind(name, "libvirt").uri)

    def remote(self, name: str, connect_timeout: float = CONNECT_TIMEOUT) -> RemoteHost:
        driver = _driver(self._of_kind(name, "ssh"), connect_timeout)
        assert isinstance(driver, RemoteHost)
        return driver

    def _of_kind(self, name: str, kind: str) -> HostView:
        view = self.get(name)
        if view.kind != kind:
            raise ConflictError(f"host {name} is a {view.kind} host, not a {kind} one")
        return view

    def vms(self, name: str) -> list[HostVM]:
        with host_errors():
            return _driver(self.get(name)).vms()

    def vm(self, name: str, vm: str) -> HostVM:
        with host_errors():
            return _driver(self.get(name)).info(vm)

    def start(self, name: str, vm: str) -> HostVM:
        with host_errors():
            return _driver(self.get(name)).start(vm)

    def snapshot(self, name: str, vm: str, snapshot: str) -> list[str]:
        """A disk-only snapshot of a libvirt domain (libvirt_host.LibvirtHost.snapshot); returns its snapshots."""
        VM_LIKE.check("snapshot", snapshot, HostSpecError)
        host = self.libvirt(name)
        with host_errors():
            return host.snapshot(vm, snapshot)

    def snapshots(self, name: str, vm: str) -> list[str]:
        host = self.libvirt(name)
        with host_errors():
            return host.snapshots(vm)

    def stop(self, name: str, vm: str, timeout: float = 60.0, force: bool = False) -> HostVM:
        with host_errors():
            return _driver(self.get(name)).stop(vm, timeout, force)

    # Last in the class: the name would shadow the built-in `list` in the annotations after it.
    def list(self) -> list[HostView]:
        with self.catalog() as s:
            return [_view(r) for r in s.scalars(select(HostRecord).order_by(HostRecord.name))]
