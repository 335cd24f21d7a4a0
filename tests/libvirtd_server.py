"""A private libvirtd for tests of libvirt hosts: `libvirtd` (a pytest fixture, session-wide).

There is no systemd here, and libvirtd run as root keeps its state in fixed places (/etc/libvirt,
/run/libvirt, /var/lib/libvirt, ...). So it runs in a mount namespace of its own where those
paths are bind-mounted over by directories of the test run: nothing outside sees its domains,
and it sees nobody else's. Its socket lives outside the hidden paths, so clients reach it with
`qemu:///system?socket=...`.

Inside the namespace /dev/kvm is covered by an empty read-only file: /dev/kvm here is PVM and
cannot boot the guest, and a /dev/kvm that libvirt finds usable while its probe of QEMU finds no
KVM makes it throw its capability cache away on every call (2 s a connection, 30 s a define).
Domains use type='qemu'.
The capability cache is kept across runs (CACHE), because probing QEMU takes a while the
first time.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

LIBVIRTD = "/usr/sbin/libvirtd"
CACHE = Path("/var/tmp/cairn-test-libvirt-cache")
HIDDEN = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt")
# The first start probes QEMU's capabilities; a busy 2-core machine makes that slow.
START_TIMEOUT = 180.0


@dataclass(frozen=True)
class Libvirtd:
    uri: str
    root: Path      # scratch space visible both to the test and to the domains' QEMUs
    log: Path

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""


def _write_config(root: Path) -> Path:
    etc = root / "etc"
    etc.mkdir()
    (etc / "libvirtd.conf").write_text("\n".join([
        f'unix_sock_dir = "{root / "sock"}"', 'unix_sock_group = "root"', 'unix_sock_rw_perms = "0700"',
        'auth_unix_rw = "none"', 'auth_unix_ro = "none"',
        f'log_outputs = "3:file:{root / "libvirtd.log"}"', ""]))
    # QEMU as root without relabelling, sandbox namespaces or virtlogd: the test guest's files and
    # sockets live in the test's own directories.
    (etc / "qemu.conf").write_text('user = "root"\ngroup = "root"\ndynamic_ownership = 0\n'
                                   'security_driver = "none"\nnamespaces = [ ]\nstdio_handler = "file"\n')
    return etc


def _script(root: Path, etc: Path) -> str:
    binds = {"/etc/libvirt": etc, "/var/cache/libvirt": CACHE}
    for hidden in HIDDEN[1:]:
        binds[hidden] = root / hidden.strip("/").replace("/", "-")
    lines = ["set -e", "mount --make-rprivate /"]
    for target, source in binds.items():
        Path(source).mkdir(parents=True, exist_ok=True)
        lines += [f"mkdir -p {target}", f"mount --bind {source} {target}"]
    (root / "no-kvm").touch(mode=0o600)
    # Read-only, so that even QEMU running as root finds it unusable (EROFS), as libvirt's
    # cached capabilities say: otherwise every call re-probes QEMU.
    lines += [(f"if [ -e /dev/kvm ]; then mount --bind {root / 'no-kvm'} /dev/kvm; "
               "mount -o remount,bind,ro /dev/kvm; fi"),
              f"exec {LIBVIRTD} -f {etc / 'libvirtd.conf'} -p {root / 'libvirtd.pid'}"]
    return "\n".join(lines)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    if not Path(LIBVIRTD).exists():
        pytest.fail("libvirtd is not installed (the Makefile's deps install libvirt-daemon-driver-qemu)")
    with private_libvirtd() as daemon:
        yield daemon


@contextmanager
def private_libvirtd() -> Iterator[Libvirtd]:
    """The daemon, running until the block ends (the fixture's, and the peers bench's)."""
    import libvirt

    # Quiet: refused connections while the daemon starts are expected.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    root = Path(tempfile.mkdtemp(prefix="cairn-lv-"))
    (root / "sock").mkdir()
    etc = _write_config(root)
    daemon = Libvirtd(f"qemu:///system?socket={root / 'sock' / 'libvirt-sock'}", root, root / "libvirtd.log")
    proc = subprocess.Popen(["unshare", "--mount", "--", "sh", "-c", _script(root, etc)],
                            stdout=subprocess.DEVNULL, stderr=(root / "stderr.log").open("w"))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {proc.returncode}: "
                                   f"{(root / 'stderr.log').read_text()}{daemon.log_tail()}")
            try:
                conn = libvirt.open(daemon.uri)
                conn.getCapabilities()
                conn.close()
                break
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield daemon
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """libvirtd leaves its domains' QEMUs running when it stops; the tests destroy theirs first."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
