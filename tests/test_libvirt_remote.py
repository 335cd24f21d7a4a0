"""A libvirt host reached over SSH (qemu+ssh://): libvirt's own connection goes through sshd on
loopback to the private libvirtd, and the backup's NBD export is read through an SSH forward of
its socket, from the host's scratch directory."""
from __future__ import annotations

import os
import pwd

from backup_helpers import same_content
from libvirt_helpers import libvirt_guest, reference_copy
from libvirtd_server import libvirtd  # noqa: F401  (fixture)

from appliance.backups.host_vm import back_up_host_vm
from restore import restore_disk

HOST = "kvm2"


def test_qemu_ssh_host_full_and_incremental(appliance, libvirtd, sshd_server, guest_kernel, tmp_path):  # noqa: F811
    server = sshd_server
    socket = libvirtd.uri.split("socket=", 1)[1]
    # libvirt's ssh transport checks host keys against ~/.ssh/known_hosts only, which a test must
    # not touch: its own connection skips the check; Cairn's forward checks `known_hosts`.
    uri = (f"qemu+ssh://{server.user}@{server.host}:{server.port}/system?socket={socket}"
           f"&keyfile={server.key_file}&proxy=netcat&no_verify=1")
    # On a remote host Cairn cannot see libvirt's per-domain directories through this test's
    # private libvirtd: give it a scratch directory owned by the user libvirt runs QEMU as.
    scratch = libvirtd.folder("lvscratch")
    qemu_user = pwd.getpwnam("libvirt-qemu")
    os.chown(scratch, qemu_user.pw_uid, qemu_user.pw_gid)
    appliance.hosts.add(HOST, uri, known_hosts=str(server.known_hosts), scratch_dir=str(scratch))
    with libvirt_guest(libvirtd, "sshguest", guest_kernel,
                       append="cairn.mode=writer cairn.writes=40 cairn.interval=1") as guest:
        assert [v.name for v in appliance.hosts.vms(HOST)] == ["sshguest"]
        kinds = []
        for step in range(2):
            guest.wait_serial(f"CAIRN: WRITE n={2 * step}", timeout=120)
            guest.dom.suspend()
            try:
                reference_copy(guest, tmp_path / "ref.raw")
                result = back_up_host_vm(appliance, HOST, "sshguest")
            finally:
                guest.dom.resume()
            kinds.append(result.manifest.kind)
            restore_disk(appliance.store, result.manifest.backup_id, "vda", tmp_path / "out.raw")
            assert same_content(tmp_path / "ref.raw", tmp_path / "out.raw")
            (tmp_path / "out.raw").unlink()
        assert kinds == ["full", "incremental"]
        assert sorted(p.name for p in scratch.iterdir()) == []   # libvirt removed its scratch files and socket
        assert result.manifest.vm == f"sshguest@{HOST}"
