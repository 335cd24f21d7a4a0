"""A host reached over SSH (paramiko) where Cairn's agent drives QEMU.

Agentless set-up, as ZStack does with Ansible: `install()` copies the agent (this package and
qemu.qmp, from the appliance's own interpreter) into a directory named after a hash of its
files, so installing again is a no-op and a newer appliance upgrades the host by installing
beside the old copy. Every call then runs `python3 -m vmm.agent` there (vmm/agent.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paramiko

from .hosts import (
    HostDisk,
    HostError,
    HostUnreachableError,
    HostVM,
    HostVMNotFoundError,
    HostVMStateError,
)
from .migration import DEFAULT_TIMEOUT as MIGRATION_TIMEOUT
from .migration import MigrationStats
from .qemu import VMStatus
from .qemu_host import HostProbe, status_from_dict
from .spec import DiskSpec, VMSpec

MIN_PYTHON = (3, 11)
CONNECT_TIMEOUT = 15.0
# The exit status of an agent call on a host that lacks this agent version.
_NOT_INSTALLED = 97
CALL_TIMEOUT = 300.0
# The agent's errors (vmm's own, by type name) that mean "not in the state for that".
_STATE_ERRORS = ("VMStateError", "VMAlreadyRunningError", "VMNotRunningError", "VMBusyError")


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None       # None: the SSH agent or ~/.ssh keys
    known_hosts: str | None = None    # None: ~/.ssh/known_hosts; unknown host keys are refused

    def ssh_args(self) -> list[str]:
        """The same connection for the OpenSSH client (tunnels, see transports/tunnel.py)."""
        args = ["-p", str(self.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        if self.key_file:
            args += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return [*args, f"{self.user}@{self.host}"]


def _agent_files() -> dict[str, bytes]:
    """relative path -> content of everything the agent imports: vmm and qemu.qmp."""
    import qemu.qmp

    files: dict[str, bytes] = {}
    for package, root in ((Path(__file__).parent, "vmm"), (Path(qemu.qmp.__file__).parent, "qemu/qmp")):
        for source in sorted(package.glob("*.py")):
            files[f"{root}/{source.name}"] = source.read_bytes()
    return files


def _version(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, content in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:16]


class RemoteHost:
    """`base` is the agent's directory on the host: its installs and the QEMUs' run directories.
    `connect_timeout`: how long the host gets to accept the connection and log us in."""

    def __init__(self, target: SshTarget, base: str = "/var/lib/cairn-agent",
                 connect_timeout: float = CONNECT_TIMEOUT):
        self.target = target
        self.base = base
        self.connect_timeout = connect_timeout
        self._files = _agent_files()
        self.version = _version(self._files)

    @property
    def agent_dir(self) -> str:
        return posixpath.join(self.base, f"agent-{self.version}")

    @property
    def run_root(self) -> str:
        return posixpath.join(self.base, "run")

    @contextmanager
    def connect(self) -> Iterator[paramiko.SSHClient]:
        client = paramiko.SSHClient()
        if self.target.known_hosts:
            client.load_host_keys(self.target.known_hosts)
        else:
            client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.target.host, port=self.target.port, username=self.target.user,
                           key_filename=self.target.key_file, allow_agent=self.target.key_file is None,
                           look_for_keys=self.target.key_file is None, timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError) as e:
            client.close()
            raise HostUnreachableError(f"cannot reach {self.target.user}@{self.target.host}:{self.target.port} "
                                  f"over SSH: {e}") from e
        try:
            yield client
        finally:
            client.close()

    def install(self) -> str:
        """Copy the agent unless this version is there; check the host's Python. Returns the version."""
        with self.connect() as client:
            python = self._run(client, "python3 -c 'import sys; print(*sys.version_info[:2])'").split()
            if tuple(int(p) for p in python) < MIN_PYTHON:
                raise HostError(f"{self.target.host} has Python {'.'.join(python)}; the agent needs "
                                      f"{'.'.join(map(str, MIN_PYTHON))} or newer")
            sftp = client.open_sftp()
            try:
                try:
                    sftp.stat(self.agent_dir)
                    return self.version
                except FileNotFoundError:
                    pass
                # Copied under a temporary name and renamed: a half-copied agent is never used.
                partial = f"{self.agent_dir}.partial"
                self._run(client, f"rm -rf {shlex.quote(partial)} && mkdir -p {shlex.quote(partial)}/vmm "
                                  f"{shlex.quote(partial)}/qemu/qmp {shlex.quote(self.run_root)}")
                for name, content in self._files.items():
                    with sftp.open(posixpath.join(partial, name), "wb") as f:
                        f.write(content)
                sftp.rename(partial, self.agent_dir)
            finally:
                sftp.close()
        return self.version

    def call(self, command: str, args: dict[str, Any] | None = None,
             timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        """Run one agent command; its error comes back as a HostError with the agent's message.
        A host without this appliance's agent version (new host, upgraded appliance) gets it first."""
        status, output, errors = self._exec_agent(command, args, timeout)
        if status == _NOT_INSTALLED:
            self.install()
            status, output, errors = self._exec_agent(command, args, timeout)
        try:
            answer = json.loads(output)
        except json.JSONDecodeError:
            raise HostError(f"the agent on {self.target.host} did not answer {command}: "
                            f"{errors.strip() or output.strip()}") from None
        if "error" in answer:
            error = HostVMStateError if answer["error"]["type"] in _STATE_ERRORS else HostError
            raise error(f"{self.target.host}: {answer['error']['message']}")
        return answer["result"]

    def _exec_agent(self, command: str, args: dict[str, Any] | None, timeout: float) -> tuple[int, str, str]:
        line = (f"test -d {shlex.quote(self.agent_dir)} || exit {_NOT_INSTALLED}; "
                f"PYTHONPATH={shlex.quote(self.agent_dir)} exec python3 -m vmm.agent "
                f"{shlex.quote(self.run_root)} {shlex.quote(command)}")
        with self.connect() as client:
            stdin, stdout, stderr = client.exec_command(line, timeout=timeout)
            stdin.write(json.dumps(args or {}))
            stdin.channel.shutdown_write()
            try:
                output, errors = stdout.read().decode(), stderr.read().decode()
            except TimeoutError as e:   # the connection went quiet: the host (or the link) is gone
                raise HostUnreachableError(f"{self.target.host} stopped answering during {command}: {e}") from e
            return stdout.channel.recv_exit_status(), output, errors

    def _run(self, client: paramiko.SSHClient, line: str) -> str:
        _stdin, stdout, stderr = client.exec_command(line, timeout=CALL_TIMEOUT)
        if stdout.channel.recv_exit_status() != 0:
            raise HostError(f"{self.target.host}: `{line}` failed: {stderr.read().decode().strip()}")
        return stdout.read().decode()

    # -- what the agent does ---------------------------------------------------------------------

    def create_disk(self, path: str, size: int) -> None:
        self.call("create-disk", {"path": path, "size": size})

    def remove(self, paths: list[str]) -> None:
        self.call("remove", {"paths": paths})

    def define_and_start(self, spec: VMSpec) -> HostVM:
        """Start a VM from a definition; later starts reuse it (`start(name)`)."""
        return _vm(self.call("start", {"spec": spec.to_dict()}))

    def status(self, name: str) -> dict[str, Any]:
        """The agent's view: state, pid, the QMP socket's path on the host, the definition."""
        answer = self.call("status", {"name": name})
        if answer["spec"] is None:
            raise HostVMNotFoundError(f"{self.target.host} has no VM {name!r}")
        return answer

    # -- HostDriver ------------------------------------------------------------------------------

    def check(self) -> str:
        self.install()
        return f"Cairn agent {self.version} (Python {self.call('hello')['python']})"

    def vms(self) -> list[HostVM]:
        return [_vm(v) for v in self.call("list")["vms"] if v["spec"]]

    def info(self, name: str) -> HostVM:
        return _vm(self.status(name))

    def start(self, name: str) -> HostVM:
        self.status(name)
        return _vm(self.call("start", {"name": name}))

    def stop(self, name: str, timeout: float = 60.0, force: bool = False) -> HostVM:
        if self.status(name)["state"] not in ("running", "paused"):
            raise HostVMStateError(f"VM {name!r} on {self.target.host} is not running")
        return _vm(self.call("stop", {"name": name, "timeout": timeout, "force": force}))


def _vm(status: dict[str, Any]) -> HostVM:
    spec = VMSpec.from_dict(status["spec"])
    return HostVM(spec.name, None, status["state"], spec.vcpus, spec.memory_mib,
                  [HostDisk(d.name, d.path, d.format) for d in spec.disks])


class RemoteQemuHost:
    """An SSH host as a QemuHost (vmm/qemu_host.py): each call is one agent command, run in a
    thread so the caller's event loop goes on meanwhile."""

    def __init__(self, remote: RemoteHost, name: str):
        self.remote = remote
        self.name = name

    async def _call(self, command: str, args: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        return await asyncio.to_thread(self.remote.call, command, args, timeout)

    async def probe(self, spec: VMSpec) -> HostProbe:
        return HostProbe.from_dict(await self._call("probe", {"spec": spec.to_dict()}))

    async def run(self, spec: VMSpec, paused: bool = False) -> VMStatus:
        return status_from_dict(await self._call("start", {"spec": spec.to_dict(), "paused": paused}))

    async def status(self, name: str) -> VMStatus:
        return status_from_dict(await self._call("status", {"name": name}))

    async def statuses(self) -> dict[str, VMStatus]:
        return {v["name"]: status_from_dict(v) for v in (await self._call("list", {}))["vms"]}

    async def stop(self, name: str, timeout: float = 30.0, force: bool = False) -> VMStatus:
        return status_from_dict(await self._call("stop", {"name": name, "timeout": timeout, "force": force},
                                                 timeout + CALL_TIMEOUT))

    async def run_state(self, name: str) -> str:
        return str((await self._call("run-state", {"name": name}))["state"])

    async def forget(self, name: str) -> None:
        await self._call("forget", {"name": name})

    async def held_disks(self, disks: list[DiskSpec]) -> list[str]:
        return list((await self._call("held-disks", {"disks": [asdict(d) for d in disks]}))["held"])

    async def receive_migration(self, spec: VMSpec, address: str) -> int:
        return int((await self._call("receive-migration", {"spec": spec.to_dict(), "address": address}))["port"])

    async def send_migration(self, name: str, uri: str, timeout: float = MIGRATION_TIMEOUT) -> MigrationStats:
        answer = await self._call("send-migration", {"name": name, "uri": uri, "timeout": timeout},
                                  timeout + CALL_TIMEOUT)
        return MigrationStats.from_dict(answer)

    async def address_facing(self) -> str:
        """This machine's address as the host sees it: the local end of a connection to it
        (where the host reaches this machine, e.g. to migrate a VM here)."""
        def local_end() -> str:
            with self.remote.connect() as client:
                transport = client.get_transport()
                assert transport is not None
                return str(transport.sock.getsockname()[0])
        return await asyncio.to_thread(local_end)
