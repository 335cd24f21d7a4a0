"""Build the test guest: Debian's cloud kernel + a busybox initramfs running ./init, with
qemu-guest-agent and the shared libraries it loads.

Nothing is installed on the host: the packages are fetched with `apt-get download` and
unpacked with `dpkg -x`. The result is cached (default ~/.cache/cairn/guest, override with
CAIRN_GUEST_CACHE) under a key made of the kernel package version and a hash of the files that
define the guest, so editing ./init or this file rebuilds it. Parallel test runs serialize on a
lock file, and a finished build appears in the cache by one atomic rename.

Run as a script to build (or find) the guest and print its paths.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Dependency order (from each module's `depends=`); the .deb has no modules.dep.
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                  "virtio_pci", "virtio_blk")
# The ACPI power button driver and evdev are modules in the cloud kernel; busybox acpid needs both
# to see system_powerdown. Neither depends on another module.
ACPI_MODULES = ("button", "evdev")
# The guest agent's virtio-serial port (needs virtio and virtio_ring, loaded before it).
AGENT_MODULES = ("virtio_console",)
# The NIC for cairn.net=dhcp (tests/test_network*.py), in dependency order.
NET_MODULES = ("failover", "net_failover", "virtio_net")
# qemu-ga and the packages holding the libraries it needs; only the libraries it actually
# loads (the DT_NEEDED closure, read with binutils' readelf) go into the initramfs.
AGENT_PACKAGES = ("qemu-guest-agent", "libglib2.0-0", "libudev1", "libnuma1", "liburing2", "libpcre2-8-0",
                  "libc6")
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "init"
APT_HINT = "the package lists may be missing or stale: run `apt-get update` and retry"
BINUTILS_HINT = "readelf comes with binutils: `apt-get install binutils`"


class GuestBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_package: str
    kernel_version: str


def default_cache_dir() -> Path:
    override = os.environ.get("CAIRN_GUEST_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "cairn" / "guest"


def build_guest(cache_dir: Path | None = None) -> GuestImage:
    """Return the cached guest for the current kernel package, building it first if needed."""
    cache_dir = cache_dir or default_cache_dir()
    package, version = _kernel_package()
    key = f"{package}_{version}_{_definition_hash()[:16]}"
    final = cache_dir / key
    image = GuestImage(final / "vmlinuz", final / "initrd.img", package, version)
    if final.is_dir():
        return image
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # another run built it while we waited for the lock
            return image
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
        try:
            out = _build(work, package)
            (out / "manifest.json").write_text(json.dumps(
                {"kernel_package": package, "kernel_version": version,
                 "definition_sha256": _definition_hash()}, indent=2) + "\n")
            out.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return image


def _kernel_package() -> tuple[str, str]:
    """The concrete kernel package the cloud meta package currently points to, and its version."""
    depends = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], hint=APT_HINT)
    package = next((line.split(":", 1)[1].strip() for line in depends.splitlines()
                    if line.strip().startswith("Depends:")), None)
    if package is None:
        raise GuestBuildError(
            f"cannot resolve {KERNEL_META_PACKAGE} to a kernel package; {APT_HINT}")
    show = _run(["apt-cache", "show", "--no-all-versions", package], hint=APT_HINT)
    version = next((line.split(":", 1)[1].strip() for line in show.splitlines()
                    if line.startswith("Version:")), None)
    if version is None:
        raise GuestBuildError(f"apt-cache knows no version of {package}; {APT_HINT}")
    return package, version


def _definition_hash() -> str:
    digest = hashlib.sha256()
    for path in (INIT_SCRIPT, Path(__file__).resolve()):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _build(work: Path, package: str) -> Path:
    debs = work / "debs"
    debs.mkdir()
    _run(["apt-get", "download", package, BUSYBOX_PACKAGE, *AGENT_PACKAGES], cwd=debs, hint=APT_HINT)
    kernel_deb = next(debs.glob(f"{package}_*.deb"))
    busybox_deb = next(debs.glob(f"{BUSYBOX_PACKAGE}_*.deb"))
    kernel_tree, busybox_tree = work / "kernel", work / "busybox"
    _run(["dpkg", "-x", str(kernel_deb), str(kernel_tree)])
    _run(["dpkg", "-x", str(busybox_deb), str(busybox_tree)])

    (module_root,) = (kernel_tree / "lib" / "modules").iterdir()
    busybox = busybox_tree / "bin" / "busybox"
    root = work / "root"
    for sub in ("bin", "lib/modules", "proc", "sys", "dev", "tmp", "etc"):
        (root / sub).mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for module in VIRTIO_MODULES + ACPI_MODULES + AGENT_MODULES + NET_MODULES:
        found = list(module_root.rglob(f"{module}.ko"))
        if len(found) != 1:
            raise GuestBuildError(
                f"expected one {module}.ko in {kernel_deb.name}, found {len(found)}")
        shutil.copy2(found[0], root / "lib" / "modules")
    agent_tree = work / "agent"
    for name in AGENT_PACKAGES:
        _run(["dpkg", "-x", str(next(debs.glob(f"{name}_*.deb"))), str(agent_tree)])
    _install_program(agent_tree, "usr/sbin/qemu-ga", root)
    shutil.copy2(INIT_SCRIPT, root / "init")
    (root / "init").chmod(0o755)

    out = work / "out"
    out.mkdir()
    shutil.copy2(kernel_tree / "boot" / f"vmlinuz-{module_root.name}", out / "vmlinuz")
    # busybox's own cpio, so the host needs no cpio package.
    listing = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
    archive = subprocess.run([str(busybox), "cpio", "-o", "-H", "newc"], cwd=root, input=listing,
                             check=True, capture_output=True).stdout
    (out / "initrd.img").write_bytes(gzip.compress(archive, compresslevel=9))
    return out


def _install_program(tree: Path, program: str, root: Path) -> None:
    """Copy `program` from an unpacked package tree into root/bin, with its ELF interpreter
    and every shared library it loads, found in the tree (never on the host)."""
    binary = tree / program
    shutil.copy2(binary, root / "bin" / binary.name)
    headers = _run(["readelf", "-l", str(binary)], hint=BINUTILS_HINT)
    interpreter = root / headers.split("Requesting program interpreter: ", 1)[1].split("]", 1)[0].lstrip("/")
    interpreter.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_library(tree, interpreter.name), interpreter)
    interpreter.chmod(0o755)
    libdir = root / LIBRARY_DIRS[0]
    libdir.mkdir(parents=True, exist_ok=True)
    pending, seen = [binary], set()
    while pending:
        for name in _needed(pending.pop()):
            if name not in seen:
                seen.add(name)
                shutil.copyfile(_library(tree, name), libdir / name)
                pending.append(libdir / name)


def _needed(elf: Path) -> list[str]:
    dynamic = _run(["readelf", "-d", str(elf)], hint=BINUTILS_HINT)
    return [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]


def _library(tree: Path, name: str) -> Path:
    for folder in LIBRARY_DIRS:
        candidate = tree / folder / name
        if candidate.exists():
            # Symlinks in the packages are relative to their folder, so they resolve inside the tree.
            return candidate.resolve()
    raise GuestBuildError(f"{name} is in none of {', '.join(AGENT_PACKAGES)}: add the package holding it")


def _run(cmd: list[str], cwd: Path | None = None, hint: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise GuestBuildError(f"{cmd[0]} is not installed (Debian host required): {err}") from err
    if done.returncode != 0:
        message = f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()}"
        raise GuestBuildError(f"{message}; {hint}" if hint else message)
    return done.stdout


if __name__ == "__main__":
    built = build_guest(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"kernel: {built.kernel}\ninitrd: {built.initrd}\n"
          f"package: {built.kernel_package} {built.kernel_version}")
