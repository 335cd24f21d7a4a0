"""Shared fixtures: the test guest, a QemuDriver on a private run root, and booting guests.

Guests run under TCG here (see vmm.accel); helpers for what they write live in guest/harness.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from ceph_cluster import ceph_cluster, ceph_s3  # noqa: F401  (Ceph for the RADOS, S3 and RBD tests)
from fastapi.testclient import TestClient
from guest.build import GuestImage, build_guest
from guest.harness import BOOT_TIMEOUT, GuestVM, MiB
from host_lab import lab  # noqa: F401  (hosts in network namespaces, for the host-pool tests)
from sshd_server import sshd_server  # noqa: F401  (a fixture shared by remote-access tests)

from appliance.access.roles import Role
from appliance.context import Appliance
from appliance.server.app import server_app
from dedup import Store
from vmm import DiskSpec, QemuDriver, VMSpec, create_disk
from vmm.rundir import RunDir, is_our_qemu, read_pid

# The catalog backends: the fixture catalog_backend, each test that has it run on SQLite and PostgreSQL.
pytest_plugins = ["catalog_backends"]

StartGuest = Callable[..., Awaitable[GuestVM]]

# Set by .ci/run: there every test must run. A test skipped for want of something (Ceph, a
# PostgreSQL server, root, a loop device, a tool) proves nothing, so it fails, saying what is missing.
REQUIRE_EVERY_TEST = os.environ.get("CAIRN_TEST_REQUIRE_ALL") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest scenarios (marked slow) first, the rest after in their usual order: `make test`
    runs two at a time, and a ten-minute test begun near the end would run on alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_EVERY_TEST and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but CI runs every test ($CAIRN_TEST_REQUIRE_ALL=1): {reason}"


@pytest.fixture(autouse=True)
def test_process_umask() -> Iterator[None]:
    """`cairn` sets its process's umask to 077 first thing (appliance/cli/main.py), and the CLI tests
    run it in this process: each test gets back the umask it started with, so that a later fixture
    (a libvirt domain's folder, which QEMU's own user must reach) is not made under the CLI's."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture(scope="session")
def guest_kernel() -> GuestImage:
    """Kernel + initramfs of the test guest, built once and cached across runs."""
    return build_guest()


@pytest.fixture
def qemu_driver() -> Iterator[QemuDriver]:
    """A QemuDriver whose VMs all die with the test.

    The run root is a short /tmp directory, not tmp_path: a unix socket path must fit in 107
    bytes and pytest's tmp_path for a long test name does not."""
    run_root = Path(tempfile.mkdtemp(prefix="cairn-run-"))
    try:
        yield QemuDriver(run_root)
    finally:
        _kill_qemus_under(run_root)
        shutil.rmtree(run_root, ignore_errors=True)


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This test's own temp directory, where Cairn's temporary files go (NBD sockets, scratch
    folders, mount points): a leftover there is this test's to see, and a test running beside it
    (`make test` runs two at a time) puts its own elsewhere. Under /tmp and short, not tmp_path:
    a unix socket path must fit in 107 bytes, and a long test name's tmp_path, under
    pytest-xdist's popen-gwN/, does not."""
    tmp_path_factory.getbasetemp()   # pytest's own temp root is settled first, outside this one
    path = Path(tempfile.mkdtemp(prefix="cairn-t-"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _kill_qemus_under(run_root: Path) -> None:
    # Only processes proven to be QEMUs of this run root (their argv carries its pidfile).
    for entry in run_root.iterdir():
        rundir = RunDir(entry)
        pid = read_pid(rundir)
        if pid is not None and is_our_qemu(pid, rundir):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_guest(qemu_driver: QemuDriver, guest_kernel: GuestImage, tmp_path: Path) -> StartGuest:
    """`vm = await start_guest(name, disk_sizes=(256 * MiB, 64 * MiB), mode="idle")`.

    Creates blank qcow2 disks vda, vdb, ... (vda must be >= 101 MiB for the boot pattern),
    boots the test guest and waits for `wait_for` on its serial console (None: don't wait).
    `acpi=False` boots a guest that ignores the power button; `append` adds kernel arguments
    (e.g. "cairn.writes=5 cairn.interval=0.5" for mode="writer")."""

    async def start(name: str = "guest", disk_sizes: tuple[int, ...] = (256 * MiB,),
                    mode: str = "idle", acpi: bool = True, append: str = "",
                    wait_for: str | None = "CAIRN: READY",
                    timeout: float = BOOT_TIMEOUT) -> GuestVM:
        disks = []
        for index, size in enumerate(disk_sizes):
            path = tmp_path / f"{name}-vd{chr(ord('a') + index)}.qcow2"
            create_disk(path, size)
            disks.append(path)
        spec = VMSpec(
            name=name,
            disks=[DiskSpec(f"vd{chr(ord('a') + i)}", str(p)) for i, p in enumerate(disks)],
            kernel=str(guest_kernel.kernel), initrd=str(guest_kernel.initrd),
            append=" ".join(filter(None, ["console=ttyS0 quiet", f"cairn.mode={mode}",
                                          f"cairn.acpi={'on' if acpi else 'off'}", append])))
        vm = GuestVM(qemu_driver, spec, disks, spawned_at=time.monotonic())
        await qemu_driver.start(spec)
        if wait_for is not None:
            await vm.wait_serial(wait_for, timeout)
        return vm

    return start


@pytest.fixture
def appliance_data_dir(catalog_backend: str | None) -> Iterator[Path]:
    """A data directory for an Appliance, short enough for the unix sockets under it;
    every QEMU and NBD server started under it dies with the test. Its catalog is the data
    dir's SQLite file, then a PostgreSQL database (catalog_backends.py)."""
    data_dir = Path(tempfile.mkdtemp(prefix="cairn-data-"))
    try:
        yield data_dir
    finally:
        run_root = data_dir / "run"
        if run_root.exists():
            _kill_qemus_under(run_root)
        _kill_servers_under(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _kill_servers_under(data_dir: Path) -> None:
    # Exports of an instant restore still copying when the test ends (nbdkit, qemu-nbd): only a
    # process whose command line names the pidfile is the one that wrote it.
    for pidfile in data_dir.rglob("*.pid"):
        with suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if str(pidfile) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def appliance(appliance_data_dir: Path) -> Appliance:
    """An appliance on a store of its own, made with the default block and pack sizes."""
    Store.init(appliance_data_dir / "store")
    return Appliance.open(str(appliance_data_dir))


TEST_PASSWORD = "correct horse battery staple"


def signed_in_client(appliance: Appliance, role: Role) -> TestClient:
    """A client of the appliance's web API, signed in (through the login route) as a new user `test-<role>`."""
    name = f"test-{role.value}"
    appliance.users.create(name, TEST_PASSWORD, role)
    client = TestClient(server_app(appliance))   # what `cairn serve` runs, once used as a context manager
    answer = client.post("/api/v1/auth/login", json={"username": name, "password": TEST_PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers["Authorization"] = f"Bearer {answer.json()['token']}"
    return client


@pytest.fixture
def api_client(appliance: Appliance) -> TestClient:
    """A client of the appliance's web API, signed in with full rights (an admin)."""
    return signed_in_client(appliance, Role.ADMIN)


@pytest.fixture
def operator_client(appliance: Appliance) -> TestClient:
    return signed_in_client(appliance, Role.OPERATOR)


@pytest.fixture
def viewer_client(appliance: Appliance) -> TestClient:
    return signed_in_client(appliance, Role.VIEWER)
