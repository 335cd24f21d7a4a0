"""Cairn's agent on a remote host: `python3 -m vmm.agent RUN_ROOT COMMAND`, arguments as JSON on
stdin, the answer as JSON on stdout.

The appliance copies this package (and qemu.qmp) to the host over SSH and runs it with the
host's own python3 (vmm/remote.py), so a host needs nothing installed but QEMU, qemu-img and
Python 3.11. Each call is one short process; the QEMUs it starts run on daemonized, found
again through their run directories as on the appliance. What placement, fencing and
migration ask of the host is a LocalQemuHost's answer there (vmm/qemu_host.py).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import VMError, VMSpecError
from .images import create_disk
from .qemu import QemuDriver
from .qemu_host import LocalQemuHost
from .rundir import read_state
from .spec import DiskSpec, VMSpec


def _status(driver: QemuDriver, name: str) -> dict[str, Any]:
    status = driver.status(name)
    state = read_state(driver.paths(name))
    return {"name": name, "state": status.state, "pid": status.pid, "accel": status.accel,
            "qmp_socket": str(driver.paths(name).qmp_socket), "spec": state.spec if state else None}


def _start(driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    """With a definition ("spec"), or by name: the definition it last ran with."""
    if "spec" in args:
        spec = VMSpec.from_dict(args["spec"])
    else:
        state = read_state(driver.paths(args["name"]))
        if state is None:
            raise VMSpecError(f"no VM {args['name']!r} was ever started here: give its definition")
        spec = VMSpec.from_dict(state.spec)
    asyncio.run(driver.start(spec, paused=bool(args.get("paused", False))))
    return _status(driver, spec.name)


def _stop(driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    method = asyncio.run(driver.stop(args["name"], timeout=float(args.get("timeout", 30)),
                                     force=bool(args.get("force", False))))
    return {**_status(driver, args["name"]), "method": method}


def _create_disk(_driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    Path(args["path"]).parent.mkdir(parents=True, exist_ok=True)
    create_disk(args["path"], int(args["size"]))
    return {"path": args["path"]}


def _remove(_driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    """Remove files the appliance made here (scratch overlays), then empty directories, in the
    order given; missing ones are fine."""
    for name in args["paths"]:
        path = Path(name)
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    return {"removed": args["paths"]}


def _here(driver: QemuDriver) -> LocalQemuHost:
    return LocalQemuHost(driver, socket.gethostname())


def _probe(driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_here(driver).probe(VMSpec.from_dict(args["spec"]))).to_dict()


def _held_disks(driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    disks = [DiskSpec(**disk) for disk in args["disks"]]
    return {"held": asyncio.run(_here(driver).held_disks(disks))}


def _receive_migration(driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    spec = VMSpec.from_dict(args["spec"])
    return {"port": asyncio.run(_here(driver).receive_migration(spec, args["address"]))}


def _send_migration(driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    stats = asyncio.run(_here(driver).send_migration(args["name"], args["uri"], float(args["timeout"])))
    return stats.to_dict()


def _forget(driver: QemuDriver, args: dict[str, Any]) -> dict[str, Any]:
    driver.forget(args["name"])
    return {"forgotten": args["name"]}


COMMANDS: dict[str, Callable[[QemuDriver, dict[str, Any]], dict[str, Any]]] = {
    "status": lambda driver, args: _status(driver, args["name"]),
    "list": lambda driver, _args: {"vms": [_status(driver, s.name) for s in driver.list_vms()]},
    "start": _start,
    "stop": _stop,
    "run-state": lambda driver, args: {"state": asyncio.run(driver.run_state(args["name"]))},
    "forget": _forget,
    "create-disk": _create_disk,
    "remove": _remove,
    "probe": _probe,
    "held-disks": _held_disks,
    "receive-migration": _receive_migration,
    "send-migration": _send_migration,
    "hello": lambda driver, _args: {"python": sys.version.split()[0], "pid": os.getpid(),
                                    "run_root": str(driver.run_root)},
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(json.dumps({"error": {"type": "UsageError",
                                    "message": f"usage: vmm.agent RUN_ROOT {{{'|'.join(COMMANDS)}}}"}}))
        return 2
    run_root, command = argv
    try:
        args = json.loads(sys.stdin.read() or "{}")
        answer = COMMANDS[command](QemuDriver(Path(run_root)), args)
    except KeyError as e:
        print(json.dumps({"error": {"type": "UsageError", "message": f"{command}: missing argument {e}"}}))
        return 2
    except (VMError, ValueError, OSError) as e:
        print(json.dumps({"error": {"type": type(e).__name__, "message": str(e)}}))
        return 1
    print(json.dumps({"result": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
