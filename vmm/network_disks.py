"""Disks QEMU opens over the network: RBD images in a Ceph pool and NBD exports.

A disk's path names them in the syntax qemu-img and qemu-nbd take, so every tool reads the same
string (a whole-VM restore into RBD writes it too, restore/whole_vm.py):
- rbd:POOL[/NAMESPACE]/IMAGE[:conf=PATH][:id=USER]  (a `:` or `\\` in a value escaped with `\\`)
- nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH

A running VM opens them with -blockdev (blockdev() below). Its rbd driver has no keyring
option: the keyring is the one the conf names, or librados' default
(/etc/ceph/$cluster.$name.keyring). Nothing is written to such a disk but the guest's data:
it is raw, thin where the server is (RBD allocates only what is written), and holds no
snapshot layer nor persistent bitmap (docs/scale-out.md, VMs on RBD).

A cluster or server that does not answer would hold QEMU or qemu-img until librados' mount
timeout (5 minutes by default): a start, an import and the backup of a stopped VM first reach
each such disk with probe(), which gives up after PROBE_TIMEOUT with an error naming the disk.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ImageError, VMSpecError

RBD_PREFIX = "rbd:"
NBD_SCHEMES = ("nbd", "nbd+unix")
NBD_DEFAULT_PORT = 10809
PROBE_TIMEOUT = 20.0
RBD_OPTIONS = ("conf", "id")
_UNESCAPED_COLON = re.compile(r"(?<!\\)((?:\\\\)*):")


def is_network(path: str) -> bool:
    return path.startswith(RBD_PREFIX) or path.split("://", 1)[0] in NBD_SCHEMES


@dataclass(frozen=True)
class RbdDisk:
    pool: str
    namespace: str
    image: str
    conf: str | None = None
    user: str | None = None

    @property
    def filename(self) -> str:
        spec = f"{self.pool}/{self.namespace + '/' if self.namespace else ''}{self.image}"
        options = {"conf": self.conf, "id": self.user}
        return RBD_PREFIX + _escape(spec) + "".join(f":{k}={_escape(v)}" for k, v in options.items() if v)

    def blockdev(self, node: str) -> dict[str, Any]:
        options: dict[str, Any] = {"driver": "rbd", "node-name": node, "pool": self.pool, "image": self.image}
        if self.namespace:
            options["namespace"] = self.namespace
        if self.conf:
            options["conf"] = self.conf
        if self.user:
            options["user"] = self.user
        return options

    def describe(self) -> str:
        return (f"RBD image {self.pool}/{self.namespace + '/' if self.namespace else ''}{self.image}"
                + (f" (conf {self.conf})" if self.conf else ""))

    def rbd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The rbd tool against this image's cluster, giving up on an unreachable one in PROBE_TIMEOUT."""
        reach = [*(["-c", self.conf] if self.conf else []), *(["--id", self.user] if self.user else []),
                 *(["--namespace", self.namespace] if self.namespace else []),
                 f"--client_mount_timeout={int(PROBE_TIMEOUT)}"]
        try:
            return subprocess.run(["rbd", *reach, *args], capture_output=True, text=True, check=False,
                                  timeout=PROBE_TIMEOUT * 2, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ImageError("RBD disks need the rbd tool: apt-get install ceph-common") from None
        except subprocess.TimeoutExpired:
            raise ImageError(f"{self.describe()}: the Ceph cluster did not answer within "
                             f"{int(PROBE_TIMEOUT * 2)} s") from None

    def create(self, size: int) -> None:
        """A new thin image; an existing one is never touched."""
        if self.exists():
            raise ImageError(f"cannot create {self.describe()}: it already exists")
        done = self.rbd("create", "--size", f"{size}B", f"{self.pool}/{self.image}")
        if done.returncode != 0:
            raise ImageError(f"cannot create {self.describe()}", stderr=_ceph_error(done.stderr))

    def exists(self) -> bool:
        done = self.rbd("info", f"{self.pool}/{self.image}")
        if done.returncode == 0:
            return True
        if "No such file or directory" in done.stderr and "error opening pool" not in done.stderr:
            return False
        raise ImageError(f"cannot reach {self.describe()}", stderr=_ceph_error(done.stderr))

    def renamed(self, image: str) -> RbdDisk:
        """Rename the image within its pool (the recycle bin moves a deleted VM's images aside so)."""
        target = RbdDisk(self.pool, self.namespace, image, self.conf, self.user)
        done = self.rbd("rename", f"{self.pool}/{self.image}", f"{self.pool}/{image}")
        if done.returncode != 0:
            raise ImageError(f"cannot rename {self.describe()} to {image}", stderr=_ceph_error(done.stderr))
        return target

    def break_locks(self) -> list[str]:
        """Break the image's locks and blocklist their holders: only for a writer known dead (its
        QEMU is gone). A killed QEMU keeps the exclusive lock until its watch times out (30 s), and
        a new QEMU's first write, and every drain of its block layer, waits for it meanwhile."""
        path = f"{self.pool}/{self.image}"
        done = self.rbd("lock", "ls", "--format=json", path)
        if done.returncode != 0:
            raise ImageError(f"cannot list the locks of {self.describe()}", stderr=_ceph_error(done.stderr))
        broken = []
        for lock in json.loads(done.stdout or "[]"):
            gone = self.rbd("lock", "rm", path, lock["id"], lock["locker"])
            if gone.returncode != 0:
                raise ImageError(f"cannot break the lock of {lock['locker']} on {self.describe()}",
                                 stderr=_ceph_error(gone.stderr))
            broken.append(lock["locker"])
        return broken

    def remove(self) -> None:
        done = self.rbd("rm", "--no-progress", f"{self.pool}/{self.image}")
        if done.returncode != 0 and "No such file or directory" not in done.stderr:
            raise ImageError(f"cannot remove {self.describe()}", stderr=_ceph_error(done.stderr))


@dataclass(frozen=True)
class NbdDisk:
    url: str
    host: str | None
    port: int
    socket: str | None
    export: str

    @property
    def filename(self) -> str:
        return self.url

    def blockdev(self, node: str) -> dict[str, Any]:
        server = ({"type": "unix", "path": self.socket} if self.socket
                  else {"type": "inet", "host": self.host, "port": str(self.port)})
        return {"driver": "nbd", "node-name": node, "server": server, "export": self.export}

    def describe(self) -> str:
        return f"NBD export {self.url}"


NetworkDisk = RbdDisk | NbdDisk


def network_disk(path: str) -> NetworkDisk | None:
    """The network disk a disk path names; None for a file or block device; VMSpecError if malformed."""
    if path.startswith(RBD_PREFIX):
        return _rbd(path)
    if is_network(path):
        return _nbd(path)
    return None


def _rbd(path: str) -> RbdDisk:
    spec, options = _fields(path)
    parts = spec.split("/")
    if len(parts) not in (2, 3) or not all(parts) or "@" in parts[-1]:
        raise VMSpecError(f"disk {path!r} is not rbd:POOL[/NAMESPACE]/IMAGE[:conf=PATH][:id=USER]")
    return RbdDisk(parts[0], parts[1] if len(parts) == 3 else "", parts[-1], options.get("conf"), options.get("id"))


def _fields(text: str) -> tuple[str, dict[str, str]]:
    """rbd:SPEC[:KEY=VALUE]...: SPEC and the options, unescaped; only conf and id are taken."""
    spec, *pairs = [_unescape(p) for p in
                    _UNESCAPED_COLON.sub(lambda m: m.group(1) + "\0", text[len(RBD_PREFIX):]).split("\0")]
    options = dict(p.partition("=")[::2] for p in pairs)
    if "keyring" in options:
        raise VMSpecError(f"{text!r}: a running VM's QEMU takes no keyring for an RBD disk; name it in the conf "
                          "([client] keyring = PATH) or use librados' default /etc/ceph/ceph.client.USER.keyring")
    if unknown := set(options) - set(RBD_OPTIONS):
        raise VMSpecError(f"{text!r}: unknown options {', '.join(sorted(unknown))} (only conf= and id=)")
    if not all(options.values()):
        raise VMSpecError(f"{text!r}: an option without a value")
    return spec, options


def _nbd(path: str) -> NbdDisk:
    url = urlsplit(path)
    socket = parse_qs(url.query).get("socket", [None])[0]
    export = unquote(url.path.removeprefix("/"))
    unix = url.scheme == "nbd+unix"
    try:
        port = url.port or NBD_DEFAULT_PORT
    except ValueError:
        port = -1
    if (unix and (not socket or url.netloc)) or (not unix and (not url.hostname or port < 0)):
        raise VMSpecError(f"disk {path!r} is not nbd://HOST[:PORT]/EXPORT nor nbd+unix:///EXPORT?socket=PATH")
    return NbdDisk(path, None if unix else url.hostname, port, socket, export)


def probe(path: str) -> int:
    """The virtual size of the network disk `path`, read now; ImageError naming it if it cannot be reached."""
    disk = network_disk(path)
    assert disk is not None, path
    if isinstance(disk, RbdDisk):
        done = disk.rbd("info", "--format=json", f"{disk.pool}/{disk.image}")
        if done.returncode != 0:
            raise ImageError(f"cannot open {disk.describe()}", stderr=_ceph_error(done.stderr))
        return int(json.loads(done.stdout)["size"])
    try:
        done = subprocess.run(["qemu-img", "info", "--output=json", "-f", "raw", disk.filename], capture_output=True,
                              text=True, check=False, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ImageError(f"{disk.describe()} did not answer within {int(PROBE_TIMEOUT)} s") from None
    if done.returncode != 0:
        raise ImageError(f"cannot open {disk.describe()}", stderr=done.stderr)
    return int(json.loads(done.stdout)["virtual-size"])


def _ceph_error(stderr: str) -> str:
    """The lines of rbd's stderr that say what went wrong (librados logs timestamps before them)."""
    lines = [re.sub(r"^\S+ \S+ \S+ -?\d+ ", "", line).strip() for line in stderr.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(lines)) or "no answer"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


@dataclass(frozen=True)
class RbdPool:
    """Where a storage pool of kind rbd creates its images: rbd:POOL[/NAMESPACE][:conf=PATH][:id=USER]."""

    pool: str
    namespace: str = ""
    conf: str | None = None
    user: str | None = None

    @classmethod
    def parse(cls, location: str) -> RbdPool:
        shape = "rbd:POOL[/NAMESPACE][:conf=PATH][:id=USER]"
        if not location.startswith(RBD_PREFIX):
            raise VMSpecError(f"{location!r} is not {shape}")
        spec, options = _fields(location)
        parts = spec.split("/")
        if len(parts) not in (1, 2) or not all(parts):
            raise VMSpecError(f"{location!r} is not {shape}")
        return cls(parts[0], parts[1] if len(parts) == 2 else "", options.get("conf"), options.get("id"))

    def image(self, name: str) -> RbdDisk:
        return RbdDisk(self.pool, self.namespace, name, self.conf, self.user)

    @property
    def location(self) -> str:
        options = {"conf": self.conf, "id": self.user}
        return (RBD_PREFIX + _escape(self.pool + (f"/{self.namespace}" if self.namespace else ""))
                + "".join(f":{k}={_escape(v)}" for k, v in options.items() if v))

    def holds(self, disk: NetworkDisk) -> bool:
        return isinstance(disk, RbdDisk) and (disk.pool, disk.namespace, disk.conf) == (self.pool, self.namespace,
                                                                                          self.conf)

    def check(self) -> None:
        """The pool can be reached and listed now; ImageError saying why not."""
        done = self.image("").rbd("ls", self.pool)
        if done.returncode != 0:
            raise ImageError(f"cannot use Ceph pool {self.pool}" + (f" (conf {self.conf})" if self.conf else ""),
                             stderr=_ceph_error(done.stderr))
