"""A host reached over SSH (paramiko) where Cairn's agent drives QEMU.

Agentless set-up, as ZStack does with Ansible: `install()` copies the agent (this package and
qemu.qmp, from the appliance's own interpreter) into a directory named after a hash of its
files, so installing again is a no-op and a newer appliance upgrades the host by installing
beside the old copy. Every call then runs `python3 -m vmm.agent` there (vmm/agent.py).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from .spec import VMSpec

MIN_PYTHON = (3, 11)
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
    """`base` is the agent's directory on the host: its installs and the QEMUs' run directories."""

    def __init__(self, target: SshTarget, base: str = "/var/lib/cairn-agent"):
        self.target = target
        self.base = base
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
                           look_for_keys=self.target.key_file is None, timeout=15)
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

    def call(self, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run one agent command; its error comes back as a HostError with the agent's message.
        A host without this appliance's agent version (new host, upgraded appliance) gets it first."""
        status, output, errors = self._exec_agent(command, args)
        if status == _NOT_INSTALLED:
            self.install()
            status, output, errors = self._exec_agent(command, args)
        try:
            answer = json.loads(output)
        except json.JSONDecodeError:
            raise HostError(f"the agent on {self.target.host} did not answer {command}: "
                            f"{errors.strip() or output.strip()}") from None
        if "error" in answer:
            error = HostVMStateError if answer["error"]["type"] in _STATE_ERRORS else HostError
            raise error(f"{self.target.host}: {answer['error']['message']}")
        return answer["result"]

    def _exec_agent(self, command: str, args: dict[str, Any] | None) -> tuple[int, str, str]:
        line = (f"test -d {shlex.quote(self.agent_dir)} || exit {_NOT_INSTALLED}; "
                f"PYTHONPATH={shlex.quote(self.agent_dir)} exec python3 -m vmm.agent "
                f"{shlex.quote(self.run_root)} {shlex.quote(command)}")
        with self.connect() as client:
            stdin, stdout, stderr = client.exec_command(line, timeout=CALL_TIMEOUT)
            stdin.write(json.dumps(args or {}))
            stdin.channel.shutdown_write()
            output, errors = stdout.read().decode(), stderr.read().decode()
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
