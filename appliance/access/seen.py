"""`Seen`: what one caller may see of the VMs, as the services that list VMs or name them take it.

Apart from the rule that computes it (visibility.py, which needs every domain's tables): a
service takes a `Seen` without importing them, and `cairn vm list` (which sees everything) too.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Seen:
    """What one caller may see of the VMs, for the queries that list VMs or name them.
    `hidden` None: everything (an admin, or the appliance itself)."""
    hidden: frozenset[str] | None = None

    @property
    def everything(self) -> bool:
        return self.hidden is None

    def vm(self, name: str) -> bool:
        return self.hidden is None or name not in self.hidden


ALL = Seen()
