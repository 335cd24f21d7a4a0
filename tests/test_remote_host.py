"""A VM on a second host reached over SSH: a real sshd on loopback plays the host, with its own
directory for the agent, the VM's disk and run directory. The appliance installs its agent
there, the agent starts QEMU, and backups read QMP and NBD through SSH forwards only.

The test itself reads the VM through SSH too (the serial console over SFTP, QMP and a reference
NBD export through forwards), so nothing here depends on the host sharing this file system.
"""
from __future__ import annotations

import asyncio
import posixpath
import shutil
import time
from pathlib import Path

import pytest
from backup_helpers import CHUNK, root_node, same_content
from guest.harness import BOOT_TIMEOUT, MiB

from appliance.backups.host_vm import back_up_host_vm
from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from appliance.hosts.service import HostUnreachableError
from restore import restore_disk
from transports.tunnel import SocketForward
from vmm import DiskSpec, QMPSession, VMSpec
from vmm.remote import RemoteHost

HOST = "far"


def add_ssh_host(appliance: Appliance, server, name: str = HOST) -> RemoteHost:
    appliance.hosts.add(name, f"ssh://{server.user}@{server.host}:{server.port}", kind="ssh",
                        key_file=str(server.key_file), known_hosts=str(server.known_hosts),
                        agent_dir=str(server.workdir / "agent"))
    return appliance.hosts.remote(name)


def start_remote_guest(remote: RemoteHost, server, guest_kernel, name: str = "rvm") -> None:
    disk = posixpath.join(remote.base, "disks", f"{name}-vda.qcow2")
    remote.create_disk(disk, 256 * MiB)
    remote.define_and_start(VMSpec(name=name, disks=[DiskSpec("vda", disk)], kernel=str(guest_kernel.kernel),
                                   initrd=str(guest_kernel.initrd),
                                   append="console=ttyS0 quiet cairn.mode=idle"))
    serial = posixpath.join(remote.run_root, name, "serial.log")
    client = server.paramiko_client()
    try:
        sftp = client.open_sftp()
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            with sftp.open(serial) as f:
                text = f.read().decode(errors="replace")
            if "CAIRN: READY" in text:
                return
            assert time.monotonic() < deadline, f"remote guest never got READY:\n{text[-2000:]}"
            time.sleep(0.2)
    finally:
        client.close()


class RemoteVM:
    """The test's own line to the remote VM: QMP through a forward of its monitor socket."""

    def __init__(self, remote: RemoteHost, name: str):
        self.remote = remote
        self.status = remote.status(name)

    def qmp(self) -> SocketForward:
        return SocketForward(self.remote.target.ssh_args(), self.status["qmp_socket"], "qmp.sock")


async def reference_copy(vm: RemoteVM, qmp: SocketForward, target: Path) -> None:
    """The disk as QEMU holds it now, exported on the host and read through a forward."""
    remote_socket = posixpath.join(vm.remote.base, "ref.sock")
    async with QMPSession(qmp.local) as s:
        node = await root_node(s, "vda")
        await s.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": remote_socket}}})
        try:
            await s.execute("block-export-add", {"type": "nbd", "id": "ref", "node-name": node, "name": "ref",
                                                 "writable": False})
            with SocketForward(vm.remote.target.ssh_args(), remote_socket, "ref.sock") as ref:
                proc = await asyncio.create_subprocess_exec(
                    "qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd+unix:///ref?socket={ref.local}", str(target))
                assert await proc.wait() == 0
            await s.execute("block-export-del", {"id": "ref"})
        finally:
            await s.execute("nbd-server-stop")


async def qmp_command(qmp: SocketForward, command: str, node_write: str | None = None) -> None:
    async with QMPSession(qmp.local) as s:
        if node_write:
            await s.qemu_io(await root_node(s, "vda"), node_write)
        else:
            await s.execute(command)


def reader_dies(disk: str, done: int, total: int) -> None:
    raise RuntimeError("reader died")


def paused_backup(appliance: Appliance, vm: RemoteVM, qmp: SocketForward, refdir: Path, full: bool = False):
    asyncio.run(qmp_command(qmp, "stop"))
    try:
        asyncio.run(reference_copy(vm, qmp, refdir / "ref.raw"))
        return back_up_host_vm(appliance, HOST, "rvm", full=full)
    finally:
        asyncio.run(qmp_command(qmp, "cont"))


@pytest.mark.slow
def test_remote_vm_full_and_incremental_through_ssh(appliance, sshd_server, guest_kernel, tmp_path):
    remote = add_ssh_host(appliance, sshd_server)
    start_remote_guest(remote, sshd_server, guest_kernel)
    assert [(v.name, v.state) for v in appliance.hosts.vms(HOST)] == [("rvm", "running")]
    vm = RemoteVM(remote, "rvm")
    try:
        with vm.qmp() as qmp:
            full = paused_backup(appliance, vm, qmp, tmp_path)
            assert full.manifest.kind == "full" and full.manifest.vm == f"rvm@{HOST}"
            restore_disk(appliance.store, full.manifest.backup_id, "vda", tmp_path / "full.raw")
            assert same_content(tmp_path / "ref.raw", tmp_path / "full.raw")

            asyncio.run(qmp_command(qmp, "", node_write=f"write -P 0x5a {150 * MiB} {MiB}"))
            inc = paused_backup(appliance, vm, qmp, tmp_path)
            assert inc.manifest.kind == "incremental" and inc.manifest.parent == full.manifest.backup_id
            # Only the chunk holding the 1 MiB write is read again.
            assert sum(d.stats.bytes_read for d in inc.manifest.disks) <= CHUNK
            restore_disk(appliance.store, inc.manifest.backup_id, "vda", tmp_path / "inc.raw")
            assert same_content(tmp_path / "ref.raw", tmp_path / "inc.raw")
            assert not same_content(tmp_path / "full.raw", tmp_path / "inc.raw")
        # A backup that fails once the disks are frozen is recorded as failed and changes nothing.
        with pytest.raises(RuntimeError, match="reader died"):
            back_up_host_vm(appliance, HOST, "rvm", progress=reader_dies)
        assert [r.status for r in appliance.backups.list(f"rvm@{HOST}")] == ["ok", "ok", "failed"]
        # The backups left nothing on the host: no scratch overlays, no export.
        assert list((sshd_server.workdir / "agent" / "scratch").iterdir()) == []

        appliance.hosts.stop(HOST, "rvm", timeout=120)
        with pytest.raises(ConflictError, match="backed up while they run"):
            back_up_host_vm(appliance, HOST, "rvm")
    finally:
        remote.call("stop", {"name": "rvm", "force": True})


def test_ssh_host_bad_input_is_refused(appliance, sshd_server, tmp_path):
    uri = f"ssh://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}"
    stranger = tmp_path / "known_hosts"
    stranger.write_text("")   # the host's key is unknown: refused, never trusted on first use
    with pytest.raises(HostUnreachableError, match="over SSH"):
        appliance.hosts.add(HOST, uri, kind="ssh", key_file=str(sshd_server.key_file), known_hosts=str(stranger))
    with pytest.raises(HostUnreachableError, match="over SSH"):
        appliance.hosts.add(HOST, f"ssh://{sshd_server.user}@127.0.0.1:1", kind="ssh",
                            key_file=str(sshd_server.key_file), known_hosts=str(sshd_server.known_hosts))
    assert appliance.hosts.list() == []

    add_ssh_host(appliance, sshd_server)
    add_ssh_host(appliance, sshd_server, "again")   # the same agent version: installed once, reused
    installed = list((sshd_server.workdir / "agent").glob("agent-*"))
    assert len(installed) == 1
    # An agent gone from the host (or an appliance upgraded since) is installed again on use.
    shutil.rmtree(installed[0])
    assert appliance.hosts.vms(HOST) == []
    assert installed[0].is_dir()
    with pytest.raises(NotFoundError, match="has no VM 'ghost'"):
        back_up_host_vm(appliance, HOST, "ghost")
    with pytest.raises(NotFoundError, match="has no VM 'ghost'"):
        appliance.hosts.start(HOST, "ghost")
    with pytest.raises(ConflictError, match="not a libvirt one"):
        appliance.hosts.libvirt(HOST)
    assert appliance.backups.list() == []


def test_ssh_host_through_the_api(api_client, sshd_server):
    body = {"name": HOST, "kind": "ssh", "uri": f"ssh://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}",
            "key_file": str(sshd_server.key_file), "known_hosts": str(sshd_server.known_hosts),
            "agent_dir": str(sshd_server.workdir / "agent")}
    answer = api_client.post("/api/v1/hosts", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["options"]["agent_dir"] == body["agent_dir"]
    assert api_client.get(f"/api/v1/hosts/{HOST}/vms").json() == []
    assert api_client.post(f"/api/v1/hosts/{HOST}/vms/ghost/backups").status_code == 404
    assert api_client.post(f"/api/v1/hosts/{HOST}/vms/ghost/stop").status_code == 404
    answer = api_client.post("/api/v1/hosts", json={**body, "name": "bad", "key_file": "/nonexistent/key"})
    assert answer.status_code == 400 and "not a regular file" in answer.json()["error"]["message"]
    answer = api_client.post("/api/v1/hosts", json={**body, "name": "bad", "key_file": str(sshd_server.known_hosts)})
    assert answer.status_code == 502 and "over SSH" in answer.json()["error"]["message"]
    assert [h["name"] for h in api_client.get("/api/v1/hosts").json()] == [HOST]
