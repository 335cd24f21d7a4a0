"""The installer ISO: its installer's refusals (run on this host; nothing is written), and end to
end: build it, boot it live, install it unattended, boot the installed disk.

End to end is one test, since each step needs the one before. To stay near ten minutes under TCG,
the live boot also runs the unattended install: an SMBIOS OEM string asks the ISO's GRUB for it,
the installer runs beside the live appliance and leaves the machine running when done
(cairn.install.after=none), so the test waits for both in whatever order they come. The ISO boots with BIOS (SeaBIOS, i440fx, IDE CD-ROM); the installed disk boots alone
with UEFI (OVMF, q35), so each firmware and each boot path (ISO GRUB, installed GRUB) is exercised
once.
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
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmm.accel import detect_accel

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
GUEST_PORT = 443  # iso/rootfs/etc/default/cairn
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MiB = 1 << 20
ISO_SIZE_LIMIT = 600 * MiB
TARGET_DISK_SIZE = "8G"
# Generous: TCG on two cores shared with other test runs.
BUILD_TIMEOUT = 25 * 60
BOOT_TIMEOUT = 20 * 60
INSTALL_TIMEOUT = 15 * 60
BANNER_TIMEOUT = 3 * 60
PASSWORD_LINE = re.compile(r"First-boot login: admin / (\S+)")

INSTALLER = REPO / "iso" / "rootfs" / "usr" / "local" / "sbin" / "cairn-install"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def health_scheme(port: int) -> str | None:
    """The scheme on which the appliance's health endpoint says ok (https first), or None."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # the appliance's first certificate is self-signed
    for scheme in ("https", "http"):
        url = f"{scheme}://127.0.0.1:{port}/api/v1/health"
        try:
            with urllib.request.urlopen(url, timeout=5, context=unverified if scheme == "https" else None) as r:
                if json.load(r).get("status") == "ok":
                    return scheme
        except (OSError, ValueError, http.client.HTTPException):
            continue
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Machine:
    process: subprocess.Popen
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

    def wait_for_serial(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := pattern.search(self.serial()):
                return match
            time.sleep(1)
        self.fail(f"{pattern.pattern!r} did not appear on the serial console within {timeout:.0f} s")
        raise AssertionError("unreachable")

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


@contextmanager
def machine(tmp_path: Path, name: str, args: list[str]) -> Iterator[Machine]:
    """A QEMU with user networking, the guest's HTTPS port forwarded, its serial console in a file."""
    port = free_port()
    serial_log = tmp_path / f"{name}.serial"
    command = ["qemu-system-x86_64", *detect_accel().qemu_args(), "-smp", "2", "-m", "2048",
               "-display", "none", "-monitor", "none", "-serial", f"file:{serial_log}",
               "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}",
               "-device", "virtio-net-pci,netdev=net0", *args]
    with open(tmp_path / f"{name}.qemu.log", "wb") as qemu_log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log)
    try:
        yield Machine(process, serial_log, port, time.monotonic())
    finally:
        # SIGTERM: QEMU closes its images cleanly.
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def build_iso(out: Path, log: Path) -> Path:
    with open(log, "wb") as output:
        done = subprocess.run(["bash", str(REPO / "iso" / "build.sh"), str(out)], check=False, stdout=output,
                              stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
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

    live_args = ["-machine", "pc", "-cdrom", str(iso), "-boot", "d", *target_drive,
                 "-smbios", "type=11,value=cairn.install=/dev/vda cairn.install.after=none"]
    with machine(tmp_path, "live", live_args) as live:
        live_scheme, live_boot_seconds = live.wait_for_api(BOOT_TIMEOUT)
        live_password = live.wait_for_serial(PASSWORD_LINE, BANNER_TIMEOUT).group(1)
        # The installer has unmounted and synced the target when it says OK.
        install_seconds = live.wait_for_install(INSTALL_TIMEOUT)

    vars_copy = tmp_path / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    installed_args = ["-machine", "q35",
                      "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                      "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}", *target_drive]
    with machine(tmp_path, "installed", installed_args) as installed:
        installed_scheme, installed_boot_seconds = installed.wait_for_api(BOOT_TIMEOUT)
        installed_password = installed.wait_for_serial(PASSWORD_LINE, BANNER_TIMEOUT).group(1)

    # Generated per appliance on its first start: the installed one is not the live one.
    assert live_password != installed_password
    with capsys.disabled():
        print(f"\nISO: build {build_seconds:.0f} s, size {iso.stat().st_size / MiB:.0f} MiB; "
              f"live boot (BIOS) to API {live_boot_seconds:.0f} s over {live_scheme}; "
              f"QEMU start to installed {install_seconds:.0f} s; "
              f"installed disk boot (UEFI) to API {installed_boot_seconds:.0f} s over {installed_scheme}")
