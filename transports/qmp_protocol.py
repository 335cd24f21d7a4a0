"""The slice of a QMP session the exports need (vmm.QMPSession provides it)."""
from __future__ import annotations

from typing import Any, Protocol


class QMP(Protocol):
    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any: ...
    async def wait_job(self, job_id: str, status: str = "concluded", timeout: float = 60.0) -> Any: ...
