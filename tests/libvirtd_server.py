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
from pathlib import Path

import pytest

LIBVIRTD = "/usr/sbin/libvirtd"
CACHE = Path("/var/tmp/cairn-test-libvirt-cache")
HIDDEN = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt")
# The first start probes QEMU's capabilities; a busy 2-core machine makes that slow.
START_TIMEOUT = 180.0


class Libvirtd:
    """The running daemon: its URI, where its files are, and restarting it (its domains go on)."""

    def __init__(self, root: Path):
        self.root = root    # scratch space visible both to the test and to the domains' QEMUs
        self.uri = f"qemu:///system?socket={root / 'sock' / 'libvirt-sock'}"
        self.log = root / "libvirtd.log"
        # libvirt's /var/lib/libvirt (where each running domain has its directory) as seen here
        self.lib_dir = root / "var-lib-libvirt"
        self._proc: subprocess.Popen | None = None

    def folder(self, name: str) -> Path:
        """A new folder under root for a test's files, which the domains' QEMUs reach too. Its
        name is made unique: the daemon serves the whole session, so both catalogs' runs of a
        test come here."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        path.chmod(0o755)
        return path

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        import libvirt

        etc = self.root / "etc"
        self._proc = subprocess.Popen(["unshare", "--mount", "--", "sh", "-c", _script(self.root, etc)],
                                      stdout=subprocess.DEVNULL, stderr=(self.root / "stderr.log").open("w"))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {self._proc.returncode}: "
                                   f"{(self.root / 'stderr.log').read_text()}{self.log_tail()}")
            try:
                conn = libvirt.open(self.uri)
                conn.getCapabilities()
                conn.close()
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """libvirtd leaves its domains' QEMUs running when it stops; the tests destroy theirs first."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def restart(self) -> None:
        """As `systemctl restart libvirtd` does: the running domains stay, and the new daemon
        finds them (and their checkpoints) again."""
        self.stop()
        self.start()


def _write_config(root: Path) -> Path:
    etc = root / "etc"
    etc.mkdir()
    (etc / "libvirtd.conf").write_text("\n".join([
        f'unix_sock_dir = "{root / "sock"}"', 'unix_sock_group = "root"', 'unix_sock_rw_perms = "0700"',
        'auth_unix_rw = "none"', 'auth_unix_ro = "none"',
        f'log_outputs = "3:file:{root / "libvirtd.log"}"', ""]))
    # As Debian configures it (QEMU as libvirt-qemu, DAC relabelling, the default security
    # drivers), except: no per-domain mount namespace (it cannot replace the covered /dev/kvm)
    # and QEMU's stdio into a file rather than through virtlogd.
    (etc / "qemu.conf").write_text('namespaces = [ ]\nstdio_handler = "file"\n')
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


@contextmanager
def running_libvirtd() -> Iterator[Libvirtd]:
    """A private libvirtd for as long as the context lasts (the fixture's body, usable alone)."""
    import libvirt

    # Quiet: refused connections while the daemon starts are expected.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    root = Path(tempfile.mkdtemp(prefix="cairn-lv-"))
    # QEMU runs as libvirt-qemu: it must be able to reach the domains' files under root.
    root.chmod(0o755)
    (root / "sock").mkdir()
    _write_config(root)
    daemon = Libvirtd(root)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    if not Path(LIBVIRTD).exists():
        pytest.fail("libvirtd is not installed (the Makefile's deps install libvirt-daemon-driver-qemu)")
    with running_libvirtd() as daemon:
        yield daemon
