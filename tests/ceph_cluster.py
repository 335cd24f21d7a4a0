"""A real one-node Ceph for the tests of the RADOS and S3 stores and of restores into RBD.

`ceph_cluster` (session scope, registered in conftest) starts one monitor, one OSD on memstore
(its data lives in the OSD's RAM: nothing to format, about 2x the data stored in RSS; the bench
uses bluestore on a sparse file instead) and one manager, all from Debian's packages, under a pytest temp directory with its own ceph.conf:
nothing goes to /etc/ceph, /var/lib/ceph, systemd or a block device. It is started by the first
test that asks for it, about 4 s here, and stopped (by the PIDs it started, then the directory
removed) when the session ends. `ceph_s3` adds radosgw to the same cluster on first use (about
3 s more) for the S3 tests. Tests share the cluster: each uses its own pool namespace, image or
bucket name (`ceph_cluster.unique(...)`).

The recipe and its pitfalls were measured in ../shared/lab/ceph (README): the settings below
carry the fixes (paxos propose interval for a quick start, the cluster log kept in the
directory, health warnings of a one-OSD cluster off, client timeouts so that a test fails
instead of hanging when the cluster is gone). The manager is needed for pool usage (quotas,
`ceph df`); admin commands go through librados' mon_command, not the `ceph` CLI (0.4 s of
Python start-up each).

Without the packages or root, the tests that need Ceph are skipped, saying what to install;
in CI they fail instead, as every skip does there (conftest.py, $CAIRN_TEST_REQUIRE_ALL).
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from procs import start_helper

PACKAGES = "ceph-mon ceph-osd ceph-mgr radosgw ceph-common python3-rados python3-rbd qemu-block-extra"
DAEMONS = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph-authtool", "monmaptool")
STORE_POOL = "cairn"       # RADOS stores, one namespace per test
RBD_POOL = "rbd"           # restore targets and VM disks
S3_ACCESS_KEY = "CAIRNTESTACCESSKEY00"
S3_SECRET_KEY = "cairn-test-secret-key-" + "0" * 18
WAIT = 120.0               # seconds allowed for each step of the start
_names = itertools.count()


@dataclass
class CephCluster:
    dir: Path
    conf: Path
    mon_port: int
    # memstore for the tests (nothing to format, data in RAM); bluestore on a sparse file in dir
    # for the bench, whose data must reach a disk as a local store's does
    objectstore: str = "memstore"
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    s3_endpoint: str | None = None
    _admin: Any = None   # a connected rados.Rados, for mon commands

    @property
    def store_pool(self) -> str:
        return STORE_POOL

    @property
    def rbd_pool(self) -> str:
        return RBD_POOL

    def unique(self, what: str) -> str:
        """A name no other test of this session uses (namespace, image, bucket: [a-z0-9-])."""
        return f"{what}-{next(_names)}-{secrets.token_hex(3)}"

    def rados_url(self, namespace: str, pool: str = STORE_POOL) -> str:
        """A store location in this cluster (dedup/location.py)."""
        return f"rados://{pool}/{namespace}?conf={self.conf}&id=admin"

    def rbd_uri(self, pool: str, image: str) -> str:
        """QEMU's rbd driver syntax, for qemu-img."""
        return f"rbd:{pool}/{image}:conf={self.conf}"

    def rados(self):
        """A new, unconnected rados.Rados of this cluster (`with cluster.rados() as c:` connects)."""
        import rados

        return rados.Rados(conffile=str(self.conf))

    def mon_command(self, prefix: str, **args: Any) -> Any:
        """A monitor command (what `ceph PREFIX ...` sends), its JSON answer; RuntimeError if refused."""
        if self._admin is None:
            self._admin = self.rados()
            self._admin.connect(timeout=int(WAIT))
        ret, out, err = self._admin.mon_command(json.dumps({"prefix": prefix, "format": "json", **args}), b"")
        if ret != 0:
            raise RuntimeError(f"ceph {prefix} {args}: {err} (errno {-ret})")
        return json.loads(out) if out.strip() else None

    def cli(self, tool: str, *args: str) -> str:
        """A Ceph command-line tool (rbd, rados, radosgw-admin) against this cluster; its stdout."""
        done = subprocess.run([tool, "-c", str(self.conf), *args], capture_output=True, text=True, timeout=WAIT,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    @property
    def s3(self) -> dict[str, str]:
        """boto3.client("s3", **cluster.s3) arguments; needs the ceph_s3 fixture."""
        assert self.s3_endpoint, "radosgw is not running: use the ceph_s3 fixture"
        return {"endpoint_url": self.s3_endpoint, "region_name": "default",
                "aws_access_key_id": S3_ACCESS_KEY, "aws_secret_access_key": S3_SECRET_KEY}

    def s3_env(self) -> dict[str, str]:
        """The environment a Cairn process needs for an s3:// store on this radosgw."""
        return {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}

    def s3_url(self, bucket: str, prefix: str = "store") -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.s3_endpoint}&region=default"

    # -- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("run", "log", "mon.a", "osd.0", "mgr.x", "rgw.0"):
            (self.dir / sub).mkdir()
        self._write_conf()
        self._make_keys()
        fsid = _conf_value(self.conf, "fsid")
        _run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
             str(self.dir / "monmap"))
        _run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(self.dir / "monmap"),
             "--keyring", str(self.dir / "keyring"))
        self._launch("mon.a", "ceph-mon", "-i", "a")
        # The OSD's mkfs needs no monitor: it runs while the monitor starts.
        osd_uuid = str(uuid.uuid4())
        mkfs = subprocess.Popen(["ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid],
                                stdout=subprocess.DEVNULL, stderr=(self.dir / "log" / "osd-mkfs.out").open("w"))
        if mkfs.wait(WAIT) != 0:
            raise RuntimeError(f"ceph-osd --mkfs failed: {(self.dir / 'log' / 'osd-mkfs.out').read_text()}")
        self.mon_command("osd new", uuid=osd_uuid, id=0)
        self._launch("mgr.x", "ceph-mgr", "-i", "x")
        self._launch("osd.0", "ceph-osd", "-i", "0")
        self._wait("osd.0 up", lambda: any(o["osd"] == 0 and o["up"] and o["in"]
                                           for o in self.mon_command("osd dump")["osds"]))
        for pool, application in ((STORE_POOL, "rados"), (RBD_POOL, "rbd")):
            self.mon_command("osd pool create", pool=pool)
            self.mon_command("osd pool application enable", pool=pool, app=application)
        self._wait("pools active", self._pools_take_io)
        self._wait("mgr available", lambda: self.mon_command("mgr stat")["available"])

    def start_rgw(self) -> None:
        """Start radosgw: the first time on a free port with an S3 user, later (restart_rgw) as it was."""
        first = self.s3_endpoint is None
        if first:
            port = _free_port()
            with self.conf.open("a") as f:
                f.write(f"\n[client.rgw.0]\nrgw data = {self.dir}/rgw.0\nlog file = {self.dir}/log/$name.log\n"
                        f"admin socket = {self.dir}/run/$cluster-$name.asok\n"
                        # without tcp_nodelay a small request waits out a delayed ACK: 40 ms, not 5
                        f"rgw frontends = beast endpoint=127.0.0.1:{port} tcp_nodelay=1\nrgw thread pool size = 32\n"
                        # a bucket's quota is checked against its usage cached this long (default 600 s);
                        # the user quota's sync interval stays at its default: at 0 its thread spins
                        "rgw enable usage log = false\nrgw bucket quota ttl = 0\n")
            self.s3_endpoint = f"http://127.0.0.1:{port}"
        endpoint = self.s3_endpoint
        self._launch("rgw.0", "radosgw", "-n", "client.rgw.0")
        self._wait("radosgw answering", lambda: _http_answers(endpoint))
        if first:
            self.cli("radosgw-admin", "user", "create", "--uid=cairn", "--display-name=cairn",
                     f"--access-key={S3_ACCESS_KEY}", f"--secret-key={S3_SECRET_KEY}")

    def stop_rgw(self) -> None:
        """The S3 endpoint goes away (a gateway down, a network cut); start_rgw brings it back."""
        self._stop_daemon("rgw.0")

    def stop(self) -> None:
        """Stop what this fixture started, gateway first and monitor last; then remove the directory."""
        if self._admin is not None:
            self._admin.shutdown()
            self._admin = None
        for name in ("rgw.0", "mgr.x", "osd.0", "mon.a"):
            self._stop_daemon(name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_daemon(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def daemon_log(self, lines: int = 20) -> str:
        tails = []
        for log in sorted((self.dir / "log").glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(tails)

    def _write_conf(self) -> None:
        d = self.dir
        self.conf.write_text(f"""[global]
fsid = {uuid.uuid4()}
mon host = v2:127.0.0.1:{self.mon_port}
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {d}/keyring
run dir = {d}/run
crash dir = {d}/run
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules = iostat
# cluster creation is a chain of ~10 map changes: batch them for 0.05 s, not Ceph's 1 s
paxos propose interval = 0.05

[mon]
mon data = {d}/mon.$id
mon cluster log file = {d}/log/cluster.$channel.log
log file = {d}/log/$name.log
admin socket = {d}/run/$cluster-$name.asok

[mgr]
mgr data = {d}/mgr.$id
log file = {d}/log/$name.log
admin socket = {d}/run/$cluster-$name.asok

[osd]
osd data = {d}/osd.$id
log file = {d}/log/$name.log
admin socket = {d}/run/$cluster-$name.asok
osd objectstore = {self.objectstore}
memstore device bytes = {4 << 30}
bluestore block create = true
bluestore block size = {20 << 30}
bluestore block db create = false
bluestore block wal create = false
osd memory target = {1 << 30}

[client]
# fail, not hang, when the cluster is gone
client mount timeout = 30
rados mon op timeout = 30
rados osd op timeout = 30
""")

    def _make_keys(self) -> None:
        keyring = str(self.dir / "keyring")
        _run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        caps = {"client.admin": ["mon", "allow *", "osd", "allow *", "mgr", "allow *"],
                "osd.0": ["mon", "allow profile osd", "mgr", "allow profile osd", "osd", "allow *"],
                "mgr.x": ["mon", "allow profile mgr", "osd", "allow *"],
                "client.rgw.0": ["mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"]}
        for name, cap in caps.items():
            args = [a for pair in zip(cap[::2], cap[1::2], strict=True) for a in ("--cap", *pair)]
            _run("ceph-authtool", keyring, "--gen-key", "-n", name, *args)
        os.chmod(keyring, 0o600)

    def _launch(self, name: str, binary: str, *args: str) -> None:
        out = (self.dir / "log" / f"{name}.out").open("w")
        # A helper of the test process (procs): killed by the kernel if pytest dies without its
        # teardown (a crash, SIGKILL); in a process group of its own, so that a Ctrl-C reaches
        # pytest only, whose teardown stops it in order.
        self.processes[name] = start_helper([binary, *args, "-c", str(self.conf), "-f"], stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT)

    def _wait(self, what: str, ready: Callable[[], object]) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.daemon_log()}")
            try:
                if ready():
                    return
            except (RuntimeError, OSError) as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"waiting for {what}: {e}\n{self.daemon_log()}") from e
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}:\n{self.daemon_log()}")
            time.sleep(0.1)

    def _pools_take_io(self) -> bool:
        """A write and read in each pool: it blocks until the pool's placement groups are active."""
        for pool in (STORE_POOL, RBD_POOL):
            with self._admin.open_ioctx(pool) as io:
                io.write_full(".probe", b"ok")
                if io.read(".probe") != b"ok":
                    return False
                io.remove_object(".probe")
        import rbd

        with self._admin.open_ioctx(RBD_POOL) as io:
            rbd.RBD().pool_init(io, False)
        return True


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=WAIT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def _conf_value(conf: Path, key: str) -> str:
    return next(line.split("=", 1)[1].strip() for line in conf.read_text().splitlines()
                if line.strip().startswith(f"{key} ="))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True   # any HTTP answer: the gateway is up
    except OSError:
        return False
    return True


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "a test Ceph cluster needs root"
    missing = [b for b in (*DAEMONS, "radosgw", "qemu-img") if shutil.which(b) is None]
    try:
        import rados  # noqa: F401
        import rbd  # noqa: F401
    except ImportError:
        missing.append("python3-rados/python3-rbd (the venv needs --system-site-packages)")
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install {PACKAGES} (.ci/run does)"
    return None


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    # A short path: the daemons' admin sockets must fit in 107 bytes.
    directory = tmp_path_factory.mktemp("ceph")
    cluster = CephCluster(directory, directory / "ceph.conf", _free_port())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ceph_s3(ceph_cluster: CephCluster) -> CephCluster:
    """The same cluster with radosgw answering S3 on 127.0.0.1."""
    if "rgw.0" not in ceph_cluster.processes:
        ceph_cluster.start_rgw()
    return ceph_cluster
