"""Live migration of a running VM to another host that sees its disks at the same paths.

With the disks on shared storage only the guest's memory and device state travel: one TCP
connection from the source QEMU straight to the destination's (`migrate` to tcp:ADDRESS:PORT).
That works the same under TCG as under KVM. Disks that are not shared would have to be
mirrored into NBD exports of the destination first (blockdev-mirror, then the switch-over),
which Cairn does not do: a VM migrates between hosts of one shared storage.

The destination starts first, with `-incoming defer`, and listens on the address the source
will connect to (migrate-incoming on port 0: QEMU picks a free port, query-migrate tells it).
It opens the disks inactive and takes no image locks until the migration completes; then the
source flushes and releases its locks and the destination takes them, so at no instant can two
QEMUs write the disks, and the guest runs on only one of them: the source stops at the
switch-over (postmigrate) and is quit. A migration that fails or does not finish in time is
cancelled: the source runs on as before and the destination's QEMU is stopped.
"""
from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from .errors import VMError, VMStateError
from .qemu import QemuDriver
from .qmp import QMPSession
from .spec import VMSpec

DEFAULT_TIMEOUT = 240.0
# The longest pause of the guest at the switch-over QEMU aims for (its default is 300 ms too,
# set here so it does not depend on the QEMU version).
DOWNTIME_LIMIT_MS = 300
POLL_INTERVAL = 0.1


class MigrationState(Enum):
    """QEMU's MigrationStatus (qapi/migration.json)."""

    NONE = "none"
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"


_ENDED = (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.CANCELLED)


@dataclass(frozen=True)
class MigrationStats:
    """What a completed migration cost, as the source's query-migrate reports it."""

    total_ms: int
    downtime_ms: int
    transferred_bytes: int
    ram_bytes: int

    @classmethod
    def from_query(cls, info: dict[str, Any]) -> MigrationStats:
        ram = info.get("ram", {})
        return cls(int(info.get("total-time", 0)), int(info.get("downtime", 0)),
                   int(ram.get("transferred", 0)), int(ram.get("total", 0)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MigrationStats:
        return cls(**{k: int(data[k]) for k in ("total_ms", "downtime_ms", "transferred_bytes", "ram_bytes")})


class MigrationError(VMError):
    """The migration did not happen; the VM runs on where it ran (`side`: which end failed)."""

    def __init__(self, vm: str, side: str, state: MigrationState | None, reason: str):
        at = f" (migration {state.value})" if state else ""
        super().__init__(f"VM {vm!r} was not migrated: the {side} failed{at}: {reason}; it runs on where "
                         "it ran")
        self.vm = vm
        self.side = side
        self.state = state
        self.reason = reason


def migration_uri(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"tcp:{host}:{port}"


async def receive(driver: QemuDriver, spec: VMSpec, address: str) -> int:
    """Start the destination QEMU of `spec`, listening for the guest's state on `address`;
    returns the port it listens on. On failure nothing of it is left running."""
    await driver.start(spec, incoming="defer")
    try:
        async with driver.session(spec.name) as qmp:
            await qmp.execute("migrate-incoming", {"uri": migration_uri(address, 0)})
            info = await qmp.execute("query-migrate")
        return int(info["socket-address"][0]["port"])
    except BaseException as err:
        await driver.stop(spec.name, force=True)
        if isinstance(err, VMError):
            raise MigrationError(spec.name, "destination", None, str(err)) from err
        raise


async def send(driver: QemuDriver, name: str, uri: str, timeout: float = DEFAULT_TIMEOUT) -> MigrationStats:
    """Migrate running VM `name` to the destination listening at `uri`, then quit its QEMU
    here. A paused VM is refused: the destination would not know to keep it paused."""
    state = driver.status(name).state
    if state != "running":
        raise VMStateError(name, f"VM {name!r} is {state}: only a running VM migrates live "
                                 "(resume it first, or start it where it should run)")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with driver.session(name) as qmp:
        # A guest that dirties memory faster than it is sent is slowed down until it converges.
        await qmp.execute("migrate-set-capabilities",
                          {"capabilities": [{"capability": "auto-converge", "state": True}]})
        await qmp.execute("migrate-set-parameters", {"downtime-limit": DOWNTIME_LIMIT_MS})
        await qmp.execute("migrate", {"uri": uri})
        while True:
            info = await qmp.execute("query-migrate")
            status = MigrationState(info["status"])
            if status is MigrationState.COMPLETED:
                break
            if status in (MigrationState.FAILED, MigrationState.CANCELLED):
                raise MigrationError(name, "source", status, info.get("error-desc", "QEMU gave no reason"))
            if loop.time() >= deadline:
                info = await _cancel(qmp)
                if MigrationState(info["status"]) is not MigrationState.COMPLETED:
                    raise MigrationError(name, "source", status, f"it did not finish within {timeout:g} s "
                                         "(a guest writing its memory faster than the link carries it)")
                break   # it completed before the cancel reached it
            await asyncio.sleep(POLL_INTERVAL)
    # The guest runs at the destination now; this QEMU holds its stopped copy.
    await driver.stop(name, force=True)
    return MigrationStats.from_query(info)


async def _cancel(qmp: QMPSession) -> dict[str, Any]:
    """Cancel the migration and wait until it has ended; its last query-migrate."""
    await qmp.execute("migrate_cancel")
    while True:
        info = await qmp.execute("query-migrate")
        if MigrationState(info["status"]) in _ENDED:
            return info
        await asyncio.sleep(POLL_INTERVAL)
