"""Intent records: what a snapshot operation is about to do, persisted before it touches a file,
so a QEMU or appliance crash in the middle is finished or rolled back later (see recover.py).

The catalog always names the files a VM opens at its next start; an operation moves it in steps
that each leave those files holding the VM's latest data:

    create  started  → overlays created (and opened by a running QEMU)
            recorded → the tree has the snapshot, the VM the overlays; then QEMU switches to them
    revert  started  → overlays on the snapshot's layers created
            recorded → the tree and the VM point at them; the dropped layers are then removed
    delete  started  → disk by disk: merge, record the tree (the intent stays), remove the file
    restore recorded → the VM points at disks restored from a backup, the tree is a new root on
                       them; the old layers and memory states are then removed (written by the
                       restore over a VM, appliance/restores/service.py, already recorded)

A `started` create or revert is rolled back (only new files exist); a `recorded` one, and any
delete, is finished: every merge step can be run again on a half-done state.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from .tree import MergeKind, VMTree

Operation = Literal["create", "revert", "delete", "restore"]
Phase = Literal["started", "recorded"]


@dataclass(frozen=True)
class NewLayer:
    disk: str
    node_id: str        # the model's node id, also the QEMU node name
    file: str


@dataclass
class Intent:
    op: Operation
    snapshot: str                                   # the snapshot's id (a restore: the backup's)
    phase: Phase = "started"
    layers: list[NewLayer] = field(default_factory=list)          # create, revert
    # delete: how each disk's layer goes, fixed when the delete began (sizes change on the way)
    merges: dict[str, MergeKind] = field(default_factory=dict)
    rate_limit: int | None = None
    obsolete: list[str] = field(default_factory=list)  # files to remove once the tree is recorded

    @property
    def what(self) -> str:
        return f"restore of backup {self.snapshot}" if self.op == "restore" else f"{self.op} of snapshot {self.snapshot}"

    def describe(self) -> str:
        return f"{self.what} ({self.phase})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Intent:
        return cls(**{**data, "layers": [NewLayer(**layer) for layer in data["layers"]]})


class Journal(Protocol):
    """Where the tree and the intent are persisted, together, in one transaction each time.
    `intent=None` records that the operation is over."""

    def record(self, tree: VMTree, intent: Intent | None) -> None: ...
