"""What the kinds share: progress per disk, reports as results, and the memo of a step that makes VMs."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from appliance.errors import NotFoundError
from appliance.metrics.live import RUNNING_BACKUPS

from ..plan import StepAction, StepContext

if TYPE_CHECKING:
    from appliance.context import Appliance


def dumped(kind: type, report: Any) -> dict[str, Any]:
    """A report of the store's (a dataclass: GcReport, PruneReport, VerifyReport) as a job's JSON result."""
    return TypeAdapter(kind).dump_python(report, mode="json")


def disk_progress(ctx: StepContext, backup_of: str | None = None) -> Callable[[str, int, int], None]:
    """A copy's progress(disk, done, total) as the job's: the bytes of all disks, and each disk's
    for a follower's bars; a backup's (of VM `backup_of`) also for /metrics while it runs."""
    disks: dict[str, tuple[int, int]] = {}

    def progress(disk: str, done: int, total: int) -> None:
        disks[disk] = (done, total)
        done_all, total_all = sum(d for d, _ in disks.values()), sum(t for _, t in disks.values())
        if backup_of is not None:
            RUNNING_BACKUPS.report(ctx.job_id, backup_of, done_all, total_all)
        ctx.progress(done_all / max(total_all, 1), {"disk": disk, "done": done, "total": total})
    return progress


def vm_exists(app: Appliance, name: str) -> bool:
    try:
        app.vms.spec(name)
    except NotFoundError:
        return False
    return True


@contextmanager
def making_vms(ctx: StepContext, names: list[str]) -> Iterator[None]:
    """Remember the VMs the block makes while it runs, for an undo after the process died inside
    it (`delete_made_vms`). A failure the block raises was undone by the service that raised it
    (and may be a name another VM has): then nothing is left to delete, and the memo says so."""
    ctx.remember(making=names)
    try:
        yield
    except BaseException:
        ctx.remember(making=[])
        raise


def delete_made_vms(app: Appliance) -> StepAction:
    async def undo(ctx: StepContext) -> None:
        for name in ctx.memo.get("making") or []:
            if vm_exists(app, name):
                app.vms.delete(name)
    return undo
