"""Typed errors of chain/. Each message says what is wrong; none leaves a half-done change."""
from __future__ import annotations


class ChainError(Exception):
    """Base class of every error chain/ raises on purpose."""


class TreeError(ChainError):
    """The request does not fit the snapshot tree (a name taken, a limit reached, a shape that
    forbids the asked merge). Nothing was changed."""


class UnknownSnapshotError(TreeError):
    def __init__(self, vm: str, ref: str):
        super().__init__(f"VM {vm} has no snapshot {ref!r} (give its id or name)")
        self.vm = vm
        self.ref = ref


class ChainMismatchError(ChainError):
    """The model and what QEMU or the image files really hold disagree."""

    def __init__(self, vm: str, problems: list[str]):
        super().__init__(f"the snapshot tree of VM {vm} does not match its disks: " + "; ".join(problems)
                         + f" (nothing was changed; `cairn snapshot check {vm} --repair` adopts what is on disk)")
        self.vm = vm
        self.problems = problems
