"""NBD push and SSHFS give the same index as NBD pull for the same point in time.

The VM stays paused, so consecutive backups see the same instant: a pull and a push of it must
produce the same chunk ids, full and incremental alike (the incremental from the push's own
checkpoint, compared with a full pull of the same instant)."""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from backup_helpers import (
    CHUNK,
    MiB,
    boot_guest_vm,
    disk_digests,
    reference_copy,
    root_node,
    run,
    same_content,
    write_pattern,
)

from appliance.backups.options import BackupOptions
from appliance.context import Appliance
from restore import restore_disk
from transports.sshfs import SshfsEndpoint


def endpoint(request: pytest.FixtureRequest, transport: str) -> SshfsEndpoint | None:
    if transport != "sshfs":
        return None
    server = request.getfixturevalue("sshd_server")
    return SshfsEndpoint(server.host, server.port, server.user, server.workdir, server.key_file,
                         server.known_hosts)


@pytest.mark.parametrize("transport", ["push", "sshfs"])
def test_push_gives_the_same_index_as_pull_for_the_same_point(appliance: Appliance, guest_kernel, tmp_path: Path,
                                                              request: pytest.FixtureRequest, transport: str):
    boot_guest_vm(appliance, guest_kernel, "vm", [128 * MiB, 32 * MiB])
    spec = appliance.vms.spec("vm")
    pushed = BackupOptions(transport=transport, sshfs=endpoint(request, transport))
    try:
        run(appliance.driver.pause("vm"))
        pulled_full = run(appliance.backups.create(spec)).manifest
        pushed_full = run(appliance.backups.create(spec, full=True, options=pushed)).manifest
        assert pushed_full.kind == "full"
        assert disk_digests(appliance, pushed_full.backup_id) == disk_digests(appliance, pulled_full.backup_id)

        # Changes of every kind: data inside a chunk, across two chunks, a chunk zeroed with
        # write-zeroes (it held the guest's boot pattern), and the small disk.
        for disk, pattern, offset, length in [("vda", 0x51, 40 * MiB + 4096, 8192),
                                              ("vda", 0x52, 3 * CHUNK - 65536, 131072),
                                              ("vdb", 0x53, 9 * MiB, 65536)]:
            run(write_pattern(appliance, "vm", disk, pattern, offset, length))
        run(zero(appliance, "vm", "vda", 0, CHUNK))
        pushed_inc = run(appliance.backups.create(spec, options=pushed)).manifest
        pulled_again = run(appliance.backups.create(spec, full=True)).manifest

        assert pushed_inc.kind == "incremental" and pushed_inc.parent == pushed_full.backup_id, pushed_inc.notes
        assert disk_digests(appliance, pushed_inc.backup_id) == disk_digests(appliance, pulled_again.backup_id)
        # Only the changed bytes crossed (QEMU's backup job copies whole 64 KiB clusters) and
        # were stored; the zeroed range became a hole.
        vda, vdb = pushed_inc.disk("vda").stats, pushed_inc.disk("vdb").stats
        assert vda.bytes_changed <= 65536 + 131072 + CHUNK and vdb.bytes_changed <= 65536, (vda, vdb)
        assert vda.bytes_stored <= 2 * (8192 + 131072) and vdb.bytes_stored <= 2 * 65536, (vda, vdb)

        async def references() -> None:
            async with appliance.driver.session("vm") as s:
                for disk in ("vda", "vdb"):
                    await reference_copy(s, disk, tmp_path / f"{disk}.ref", tmp_path / "ref.sock")
        run(references())
        for disk in ("vda", "vdb"):
            restore_disk(appliance.store, pushed_inc.backup_id, disk, tmp_path / f"{disk}.out")
            assert same_content(tmp_path / f"{disk}.ref", tmp_path / f"{disk}.out"), disk
    finally:
        run(appliance.vms.stop("vm", timeout=5, force=True))
    assert not list(appliance.settings.scratch_dir.glob("*/*.qcow2"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def zero(appliance: Appliance, vm: str, disk: str, offset: int, length: int) -> None:
    async with appliance.driver.session(vm) as s:
        await s.qemu_io(await root_node(s, disk), f"write -z {offset} {length}")


def test_an_unreachable_sshfs_endpoint_fails_clearly_and_keeps_the_checkpoint(appliance: Appliance, guest_kernel,
                                                                               sshd_server, tmp_path: Path):
    boot_guest_vm(appliance, guest_kernel, "vm", [128 * MiB])
    spec = appliance.vms.spec("vm")
    good = SshfsEndpoint(sshd_server.host, sshd_server.port, sshd_server.user, sshd_server.workdir,
                         sshd_server.key_file, sshd_server.known_hosts)
    try:
        first = run(appliance.backups.create(spec)).manifest
        stranger = tmp_path / "known_hosts"
        stranger.write_text(f"[{good.host}]:{good.port} ssh-ed25519 "
                            "AAAAC3NzaC1lZDI1NTE5AAAAIDdXXtO3+yqfPCdh+TDeh2UqFq4PSvD3tNvPJ6J0Pvvd\n")
        for wrong in (dataclasses.replace(good, known_hosts=stranger),       # a host key that does not match
                      dataclasses.replace(good, port=free_port())):                 # no server there
            with pytest.raises(Exception, match="cannot mount"):
                run(appliance.backups.create(spec, options=BackupOptions(transport="sshfs", sshfs=wrong)))
        after = run(appliance.backups.create(spec)).manifest
        assert after.kind == "incremental" and after.parent == first.backup_id and not after.notes, after.notes
    finally:
        run(appliance.vms.stop("vm", timeout=5, force=True))
    assert [b.status for b in appliance.backups.list("vm")] == ["ok", "failed", "failed", "ok"]


def test_backup_options_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="transport 'carrier-pigeon'"):
        BackupOptions(transport="carrier-pigeon")
    with pytest.raises(ValueError, match="needs an sshfs endpoint"):
        BackupOptions(transport="sshfs")
    with pytest.raises(ValueError, match="full_every"):
        BackupOptions(full_every=True)
