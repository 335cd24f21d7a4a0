"""The installer ISO: its installer's refusals (run on this host; nothing is written), and end to
end: build it, boot it live, install it unattended, boot the installed disk.

End to end is one test, since each step needs the one before. It is kept to a few minutes under
TCG on two cores:
- the test build compresses the system image with lz4 (CAIRN_ISO_SQUASHFS=lz4, said in its
  manifest): made in a third of the time of zstd, and faster to boot and install under emulation;
- the live boot also runs the unattended install: an SMBIOS OEM string asks the ISO's GRUB for it,
  the installer runs beside the live appliance and leaves the machine running when done
  (cairn.install.after=none), so the test waits for both in whatever order they come;
- meanwhile, on the live appliance, a VM started through the API outlives `systemctl restart
  cairn`, typed into the root shell that the live medium opens on the serial console (why it
  does: iso/rootfs/etc/systemd/system/cairn.service).
The ISO boots from CD with UEFI (OVMF, q35, SATA CD-ROM); the installed disk boots alone with BIOS
(SeaBIOS, i440fx, virtio disk): each firmware, each medium and each GRUB (the ISO's, the installed
one) is exercised once.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmm.accel import detect_accel

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
GUEST_PORT = 443  # iso/rootfs/etc/default/cairn
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MiB = 1 << 20
ISO_SIZE_LIMIT = 700 * MiB  # lz4: bigger than a release build
TEST_SQUASHFS = "lz4"
TARGET_DISK_SIZE = "8G"
# Generous: TCG on two cores shared with other test runs.
BUILD_TIMEOUT = 25 * 60
BOOT_TIMEOUT = 20 * 60
INSTALL_TIMEOUT = 15 * 60
BANNER_TIMEOUT = 3 * 60
SHELL_TIMEOUT = 5 * 60
API_TIMEOUT = 5 * 60
PASSWORD_LINE = re.compile(r"First-boot login: admin / (\S+)")
LIVE_SHELL_PROMPT = re.compile(r"root@cairn:~# ")

INSTALLER = REPO / "iso" / "rootfs" / "usr" / "local" / "sbin" / "cairn-install"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def unverified_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the appliance's first certificate is self-signed
    return context


def health_scheme(port: int) -> str | None:
    """The scheme on which the appliance's health endpoint says ok (https first), or None."""
    for scheme in ("https", "http"):
        url = f"{scheme}://127.0.0.1:{port}/api/v1/health"
        try:
            with urllib.request.urlopen(url, timeout=5, context=unverified_tls() if scheme == "https" else None) as r:
                if json.load(r).get("status") == "ok":
                    return scheme
        except (OSError, ValueError, http.client.HTTPException):
            continue
    return None


def accel_args() -> list[str]:
    accel = detect_accel()
    if accel.name == "kvm":
        return accel.qemu_args()
    # Not TCG's usual "max" CPU: with its ERMS and FSRM the guest's kernel and C library copy and
    # clear memory with rep movsb/stosb, which TCG runs one byte at a time, and it saves AVX state
    # on each context switch. On the plain qemu64 model the live system boots and copies itself
    # to disk two to three times faster.
    return ["-accel", "tcg,thread=multi", "-cpu", "qemu64"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Machine:
    process: subprocess.Popen
    console: socket.socket
    serial_log: Path
    port: int
    started: float

    def serial(self) -> str:
        return self.serial_log.read_bytes().decode(errors="replace") if self.serial_log.exists() else ""

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- last serial output ---\n{self.serial()[-4000:]}")

    def wait_for_api(self, timeout: float) -> tuple[str, float]:
        """Poll until the API answers; the scheme it spoke and seconds since QEMU started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.fail(f"QEMU exited ({self.process.returncode}) before the API answered")
            scheme = health_scheme(self.port)
            if scheme:
                return scheme, time.monotonic() - self.started
            time.sleep(1)
        self.fail(f"no answer from /api/v1/health within {timeout:.0f} s")
        raise AssertionError("unreachable")

    def api(self, scheme: str, method: str, path: str, body: dict[str, Any] | None = None,
            token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{self.port}{path}", method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT,
                                        context=unverified_tls() if scheme == "https" else None) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            pytest.fail(f"{method} {path}: {error.code} {error.read().decode(errors='replace')}")

    def wait_for_serial(self, pattern: re.Pattern[str], timeout: float, since: int = 0) -> re.Match[str]:
        """The first match of pattern in the serial output from character `since` on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := pattern.search(self.serial(), since):
                return match
            time.sleep(1)
        self.fail(f"{pattern.pattern!r} did not appear on the serial console within {timeout:.0f} s")
        raise AssertionError("unreachable")

    def run_in_live_shell(self, command: str, answer: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Type a command into the root shell that the live medium opens on the serial console;
        the match of `answer` in what follows. The command's own echo must not match it."""
        self.wait_for_serial(LIVE_SHELL_PROMPT, timeout)
        since = len(self.serial())
        self.console.sendall(command.encode() + b"\n")
        return self.wait_for_serial(answer, timeout, since)

    def wait_for_install(self, timeout: float) -> float:
        """Wait for the installer's verdict; seconds since QEMU started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            serial = self.serial()
            if "CAIRN-INSTALL-FAILED" in serial:
                self.fail("the installer failed")
            if "CAIRN-INSTALL-OK /dev/vda" in serial:
                return time.monotonic() - self.started
            if self.process.poll() is not None:
                self.fail(f"QEMU exited ({self.process.returncode}) before the installer finished")
            time.sleep(1)
        self.fail(f"the installer did not finish within {timeout:.0f} s")
        raise AssertionError("unreachable")


def connect_console(path: Path, process: subprocess.Popen) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        console = socket.socket(socket.AF_UNIX)
        try:
            console.connect(str(path))
            return console
        except OSError:
            console.close()
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def drain(console: socket.socket) -> None:
    # QEMU writes the serial output to the log file itself (logfile=); this only reads it off the
    # socket, so that a full socket never stalls the guest.
    with suppress(OSError):
        while console.recv(65536):
            pass


@contextmanager
def machine(tmp_path: Path, name: str, args: list[str]) -> Iterator[Machine]:
    """A QEMU with user networking, the guest's HTTPS port forwarded, and its serial console on a
    socket (to type into) and in a file."""
    port = free_port()
    serial_log = tmp_path / f"{name}.serial"
    # A unix socket path must fit in 107 bytes; pytest's tmp_path may not.
    socket_dir = Path(tempfile.mkdtemp(prefix="cairn-iso-"))
    console_path = socket_dir / "console"
    # wait=on: the guest starts once the console is connected, so it never writes to nobody.
    command = ["qemu-system-x86_64", *accel_args(), "-smp", "2", "-m", "2048",
               "-display", "none", "-monitor", "none",
               "-chardev", f"socket,id=console,path={console_path},server=on,wait=on,logfile={serial_log}",
               "-serial", "chardev:console",
               "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}",
               "-device", "virtio-net-pci,netdev=net0", *args]
    with open(tmp_path / f"{name}.qemu.log", "wb") as qemu_log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log)
    console = None
    try:
        console = connect_console(console_path, process)
        threading.Thread(target=drain, args=(console,), daemon=True).start()
        yield Machine(process, console, serial_log, port, time.monotonic())
    finally:
        # SIGTERM: QEMU closes its images cleanly.
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if console is not None:
            console.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def build_iso(out: Path, log: Path) -> Path:
    with open(log, "wb") as output:
        done = subprocess.run(["bash", str(REPO / "iso" / "build.sh"), str(out)], check=False, stdout=output,
                              stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT,
                              env={**os.environ, "CAIRN_ISO_SQUASHFS": TEST_SQUASHFS})
    assert done.returncode == 0, f"iso/build.sh failed:\n{log.read_text(errors='replace')[-4000:]}"
    return out / f"cairn-{VERSION}.iso"


def extract_from_iso(iso: Path, member: str, dest: Path) -> str:
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", member, str(dest)],
                   check=True, capture_output=True)
    return dest.read_text()


def check_build_outputs(iso: Path, tmp_path: Path) -> None:
    assert iso.stat().st_size < ISO_SIZE_LIMIT
    recorded_sum, recorded_name = (iso.parent / f"{iso.name}.sha256").read_text().split()
    digest = hashlib.sha256()
    with open(iso, "rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    assert (recorded_sum, recorded_name) == (digest.hexdigest(), iso.name)

    manifest = (iso.parent / f"cairn-{VERSION}.manifest").read_text()
    assert re.search(r"^linux-image-amd64 \S+ amd64$", manifest, re.MULTILINE)
    assert re.search(r"^qemu-system-x86 \S+ amd64$", manifest, re.MULTILINE)
    assert f"cairn=={VERSION}" in manifest.splitlines()
    assert f"# system image compression: {TEST_SQUASHFS}" in manifest.splitlines()
    assert extract_from_iso(iso, "/manifest.txt", tmp_path / "manifest.txt") == manifest
    sums = extract_from_iso(iso, "/sha256sum.txt", tmp_path / "sha256sum.txt")
    assert re.search(r"^[0-9a-f]{64}  \./live/filesystem\.squashfs$", sums, re.MULTILINE)


def run_installer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALLER), *args], capture_output=True, text=True, timeout=60, check=False)


@needs_root
def test_installer_refuses_what_is_not_a_disk() -> None:
    done = run_installer("--yes", "/dev/cairn-no-such-disk")
    assert done.returncode == 1
    assert "CAIRN-INSTALL-FAILED: /dev/cairn-no-such-disk is not a block device" in done.stdout


@needs_root
def test_installer_refuses_an_unknown_final_action() -> None:
    done = run_installer("--yes", "--after", "sideways", "/dev/cairn-no-such-disk")
    assert done.returncode == 1
    assert "cairn.install.after=sideways: expected reboot, poweroff or none" in done.stdout


@needs_root
@pytest.mark.skipif(shutil.which("losetup") is None, reason="needs losetup")
def test_installer_refuses_a_loop_device_and_leaves_it_alone(tmp_path: Path) -> None:
    image = tmp_path / "loop.img"
    content = os.urandom(4 * MiB)
    image.write_bytes(content)
    attach = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False)
    if attach.returncode != 0:
        pytest.skip(f"no loop device: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    try:
        done = run_installer("--yes", device)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    assert done.returncode == 1
    assert f"CAIRN-INSTALL-FAILED: {device} is not a whole disk" in done.stdout
    assert image.read_bytes() == content


# Typed into the live shell: the QEMU of the VM that Cairn started, cairn's main pid, a restart of
# the service, then whether that QEMU still runs, its control group, and cairn's new main pid.
RESTART_PROBE = ("q=$(pgrep -f 'guest=restart-probe'); c=$(systemctl show -P MainPID cairn); "
                 "systemctl restart cairn; echo \"restart-probe: qemu $q cairn $c $(systemctl show -P MainPID cairn)"
                 " $(cat /proc/$q/cgroup 2>/dev/null || echo killed)\"")
RESTART_PROBE_ANSWER = re.compile(r"restart-probe: qemu (\d+) cairn (\d+) (\d+) (\S+)")


def check_vms_outlive_a_restart_of_cairn(live: Machine, scheme: str, password: str) -> None:
    token = live.api(scheme, "POST", "/api/v1/auth/login", {"username": "admin", "password": password})["token"]
    # A blank disk: the VM sits in its firmware, which is all a running QEMU needs to be here.
    live.api(scheme, "POST", "/api/v1/vms",
             {"name": "restart-probe", "memory_mib": 32, "disks": ["1M"], "console": False}, token)
    vm = live.api(scheme, "POST", "/api/v1/vms/restart-probe/start", None, token)
    assert vm["state"] == "running"
    qemu, cairn_before, cairn_after, cgroup = live.run_in_live_shell(
        RESTART_PROBE, RESTART_PROBE_ANSWER, SHELL_TIMEOUT).groups()
    assert int(qemu) == vm["pid"]
    assert cairn_after != cairn_before, "cairn.service did not restart"
    assert cgroup != "killed", "restarting cairn.service killed the VM's QEMU"
    # A dash in a slice name nests it: cairn-vms.slice is in cairn.slice.
    assert cgroup.startswith("0::/cairn.slice/cairn-vms.slice/"), cgroup


@needs_root
@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 2 * BOOT_TIMEOUT + INSTALL_TIMEOUT)
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86")
def test_iso_boots_live_installs_unattended_and_the_disk_boots(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    iso = build_iso(tmp_path / "out", tmp_path / "build.log")
    build_seconds = time.monotonic() - started
    check_build_outputs(iso, tmp_path)

    target = tmp_path / "target.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), TARGET_DISK_SIZE], check=True)
    target_drive = ["-drive", f"file={target},if=virtio,format=qcow2"]

    vars_copy = tmp_path / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    live_args = ["-machine", "q35",
                 "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                 "-cdrom", str(iso), "-boot", "d", *target_drive,
                 "-smbios", "type=11,value=cairn.install=/dev/vda cairn.install.after=none"]
    with machine(tmp_path, "live", live_args) as live:
        live_scheme, live_boot_seconds = live.wait_for_api(BOOT_TIMEOUT)
        live_password = live.wait_for_serial(PASSWORD_LINE, BANNER_TIMEOUT).group(1)
        check_vms_outlive_a_restart_of_cairn(live, live_scheme, live_password)
        restart_checked_seconds = time.monotonic() - live.started
        # The installer has unmounted and synced the target when it says OK.
        install_seconds = live.wait_for_install(INSTALL_TIMEOUT)
    live_seconds = time.monotonic() - live.started

    installed_args = ["-machine", "pc", *target_drive]
    with machine(tmp_path, "installed", installed_args) as installed:
        installed_scheme, installed_boot_seconds = installed.wait_for_api(BOOT_TIMEOUT)
        installed_password = installed.wait_for_serial(PASSWORD_LINE, BANNER_TIMEOUT).group(1)
    installed_seconds = time.monotonic() - installed.started

    # Generated per appliance on its first start: the installed one is not the live one.
    assert live_password != installed_password
    with capsys.disabled():
        print(f"\nISO: build {build_seconds:.0f} s, size {iso.stat().st_size / MiB:.0f} MiB; "
              f"live boot (UEFI, CD) to API {live_boot_seconds:.0f} s over {live_scheme}, "
              f"VM outlived a restart of cairn at {restart_checked_seconds:.0f} s, "
              f"installed at {install_seconds:.0f} s, machine gone at {live_seconds:.0f} s; "
              f"installed disk boot (BIOS) to API {installed_boot_seconds:.0f} s over {installed_scheme}, "
              f"machine gone at {installed_seconds:.0f} s; total {time.monotonic() - started:.0f} s")
