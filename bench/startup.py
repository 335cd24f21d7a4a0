#!/usr/bin/env python3
"""How fast Cairn starts: the CLI beside a bare Python start, and `cairn serve` until it answers.

  python -c pass            the floor: this venv's interpreter starting and stopping
  python -c "import ..."    what any local listing cannot do without: typer with the pydantic coercion
                            of its options, SQLAlchemy's ORM and its SQLite dialect (no Cairn code)
  cairn --help, cairn backup list --json, cairn vm list --json, cairn job list --json
                            on a data dir whose catalog is at its newest revision (no migration)
  cairn backup list --json through the API
                            the same listing signed in (`cairn login`) to a `cairn serve` of that
                            data dir on loopback: the remote CLI, no database library
  cairn backup list --json (local, appliance running)
                            the local listing while that `cairn serve` runs: it reads through the
                            appliance's local socket (<data dir>/api.sock), no database library
  cairn serve               from spawning it to the first 200 of GET /api/v1/health: on a fresh
                            data dir (catalog, TLS certificate and first admin made) and restarted

Cairn's modules are compiled first, as pip compiles an installed wheel's: with
PYTHONDONTWRITEBYTECODE set, a source checkout would otherwise compile them again at every start.

Each figure is the median and the slowest of --runs runs, one command at a time; a CLI command's
cost is its median less the bare start's. Goals (issue 16): a CLI command within 0.3 s of the bare
start, `cairn serve` answering within 2 s. On a shared machine the load average (printed before
and after) says how far to trust them. --instructions also counts each start's instructions under
valgrind's cachegrind, which the load does not change, and converts what a command runs beyond the
bare start to seconds at the bare start's own pace in its fastest run (the least disturbed one).
--imports adds each command's heaviest imports (python -X importtime: what to make lazy next).
Run: .venv/bin/python bench/startup.py [--runs 10] [--serve-runs 5] [--instructions] [--imports]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CAIRN = str(Path(PYTHON).with_name("cairn"))
CLI_GOAL, SERVE_GOAL = 0.3, 2.0
# typer coerces a command's options with pydantic (typer._adapters) as it parses them.
LISTING_LIBRARIES = "import typer, typer._adapters, sqlalchemy.orm, sqlalchemy.dialects.sqlite"
COMMANDS = [["--help"], ["backup", "list", "--json"], ["vm", "list", "--json"], ["job", "list", "--json"]]
REMOTE_LISTING = ["backup", "list", "--json"]
NAME_WIDTH = 52
PACKAGES = ["appliance", "chain", "dedup", "procs", "restore", "transports", "vmm"]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed_run(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def compile_cairn() -> None:
    """Cairn's modules compiled, as pip compiles an installed wheel's (PYTHONDONTWRITEBYTECODE aside)."""
    subprocess.run([PYTHON, "-m", "compileall", "-q", *PACKAGES], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})


def serve_until_healthy(env: dict[str, str]) -> float:
    """Seconds from spawning `cairn serve` to its first healthy answer (then it is stopped)."""
    began = time.perf_counter()
    with served(env):
        return time.perf_counter() - began


@contextmanager
def served(env: dict[str, str]) -> Iterator[str]:
    """`cairn serve` on a free loopback port, from its first healthy answer until the block ends: its URL."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    server = subprocess.Popen([CAIRN, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health", verify=False, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"cairn serve exited with {server.returncode}")
            time.sleep(0.01)
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def signed_in(url: str, data_dir: Path, config: Path) -> dict[str, str]:
    """An environment whose commands work on the appliance at `url` through its API: its first
    admin signed in (`cairn login`, the certificate's fingerprint given) with `config` as the
    user's config dir, and no data dir named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["XDG_CONFIG_HOME"] = str(config)
    der = ssl.PEM_cert_to_DER_cert((data_dir / "tls" / "cert.pem").read_text())
    fingerprint = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    subprocess.run([CAIRN, "login", url, "--user", "admin", "--password-stdin", "--fingerprint", fingerprint],
                   input=(data_dir / "initial-admin-password").read_text().strip() + "\n", env=env, check=True,
                   capture_output=True, text=True)
    return env


def instructions(argv: list[str], env: dict[str, str]) -> int:
    """The instructions a run of `argv` executes, counted by cachegrind (no cache simulation)."""
    trace = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                            *argv], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True).stderr
    found = re.search(r"I\s+refs:\s+([\d,]+)", trace)
    if found is None:
        raise SystemExit(f"cachegrind printed no instruction count for {argv}:\n{trace}")
    return int(found[1].replace(",", ""))


def counted(runs: list[tuple[str, list[str], dict[str, str]]]) -> list[tuple[str, list[str], int]]:
    """Each run's (name, argv, environment) name, argv and instructions, counted now: a local
    listing's while no appliance runs (in-process) or while one does (through its socket)."""
    return [(name, argv, instructions(argv, run_env)) for name, argv, run_env in runs]


def say_instructions(floor_samples: list[float], env: dict[str, str], runs: list[tuple[str, list[str], int]]) -> None:
    """Each counted run's instructions beyond the bare start's, in seconds at the bare start's
    pace; a CLI command's against the goal."""
    bare = instructions([PYTHON, "-c", "pass"], env)
    pace = bare / min(floor_samples)   # instructions a second, the machine least disturbed
    print(f"\ninstructions (cachegrind), at {pace / 1e9:.2f} G/s (the bare start's fastest run):")
    print(f"{'python -c pass':<{NAME_WIDTH}} {bare / 1e6:7.1f} M")
    for name, argv, count in runs:
        spent = (count - bare) / pace
        goal = "" if argv[1:2] == ["-c"] else f"   (goal {CLI_GOAL:g} s: {'met' if spent <= CLI_GOAL else 'MISSED'})"
        print(f"{name:<{NAME_WIDTH}} {count / 1e6:7.1f} M   over the bare start {(count - bare) / 1e6:7.1f} M = {spent:6.3f} s"
              + goal)


def heaviest_imports(argv: list[str], env: dict[str, str], count: int = 10) -> list[tuple[int, str]]:
    """The top-level imports a command makes, heaviest first (microseconds, cumulative)."""
    trace = subprocess.run([PYTHON, "-X", "importtime", "-m", "appliance.cli", *argv], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
    top = [(int(m[1]), m[2]) for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \| {1,3}(\S+)", trace)]
    return sorted(top, reverse=True)[:count]


def say(name: str, samples: list[float], floor: float | None = None, goal: float | None = None) -> None:
    p50 = statistics.median(samples)
    line = f"{name:<{NAME_WIDTH}} p50 {p50:6.3f} s   max {max(samples):6.3f} s"
    if floor is not None:
        line += f"   over the bare start {p50 - floor:6.3f} s"
    if goal is not None:
        spent = p50 - floor if floor is not None else p50
        line += f"   (goal {goal:g} s: {'met' if spent <= goal else 'MISSED'})"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--serve-runs", type=int, default=5)
    parser.add_argument("--instructions", action="store_true",
                        help="also count each start's instructions (valgrind's cachegrind; slow: ~10 s a command)")
    parser.add_argument("--imports", action="store_true", help="also list each CLI command's heaviest imports")
    args = parser.parse_args()
    print(f"load average {load()} on {os.cpu_count()} CPUs")
    compile_cairn()
    with tempfile.TemporaryDirectory(prefix="cairn-bench-startup-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {**os.environ, "CAIRN_DATA_DIR": str(data_dir)}
        env.pop("CAIRN_CATALOG_URL", None)
        subprocess.run([CAIRN, "vm", "list"], env=env, check=True, capture_output=True)   # data dir made, catalog at head
        floor_samples = [timed_run([PYTHON, "-c", "pass"], env) for _ in range(args.runs)]
        floor = statistics.median(floor_samples)
        say("python -c pass", floor_samples)
        say("libraries of a listing", [timed_run([PYTHON, "-c", LISTING_LIBRARIES], env) for _ in range(args.runs)],
            floor)
        for argv in COMMANDS:
            say(f"cairn {' '.join(argv)}", [timed_run([CAIRN, *argv], env) for _ in range(args.runs)], floor, CLI_GOAL)
        in_process = counted([("libraries of a listing", [PYTHON, "-c", LISTING_LIBRARIES], env),
                              *((f"cairn {' '.join(argv)}", [CAIRN, *argv], env) for argv in COMMANDS)]
                             ) if args.instructions else []
        remote_name = f"cairn {' '.join(REMOTE_LISTING)} (API)"
        socket_name = f"cairn {' '.join(REMOTE_LISTING)} (local, appliance running)"
        with served(env) as url:
            remote_env = signed_in(url, data_dir, Path(tmp) / "config")
            say(remote_name, [timed_run([CAIRN, *REMOTE_LISTING], remote_env) for _ in range(args.runs)], floor,
                CLI_GOAL)
            say(socket_name, [timed_run([CAIRN, *REMOTE_LISTING], env) for _ in range(args.runs)], floor, CLI_GOAL)
            if args.instructions:   # these listings need their appliance serving
                say_instructions(floor_samples, env, in_process + counted([
                    (remote_name, [CAIRN, *REMOTE_LISTING], remote_env),
                    (socket_name, [CAIRN, *REMOTE_LISTING], env)]))
        fresh = []
        for run in range(args.serve_runs):
            fresh.append(serve_until_healthy({**env, "CAIRN_DATA_DIR": str(Path(tmp) / f"fresh{run}")}))
        say("cairn serve (fresh data dir)", fresh, goal=SERVE_GOAL)
        say("cairn serve (restart)", [serve_until_healthy(env) for _ in range(args.serve_runs)], goal=SERVE_GOAL)
        if args.imports:
            for argv in COMMANDS:
                print(f"\nheaviest imports of cairn {' '.join(argv)} (ms, cumulative):")
                for micros, module in heaviest_imports(argv, env):
                    print(f"  {micros / 1000:7.1f}  {module}")
    print(f"load average {load()}")


if __name__ == "__main__":
    main()
