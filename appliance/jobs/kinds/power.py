"""Starting and stopping a VM as jobs: on the VM's resource, so a start or a graceful stop waits
for a backup, snapshot, restore or migration of the VM to end, and each leaves its record and
its messages (where it started; how it stopped) in the VM's history. The VMs of registered hosts
(libvirt, ssh) alike, on the resource their backups take (`vm:<vm>@<host>`).

A forced stop does not wait for a graceful one that waits for its guest: it cuts it short
(JobPlan.cuts_short), and the graceful stop, cancelled, ends QEMU itself: the guest was asked to
shut down already and is not left half-way. The services' own jobs that start or stop their VM
(a restore over it, an instant restore, a snapshot's revert) call VMService directly: they hold
the VM's resource already, and a job of theirs would wait for them forever. HA, which restarts a
VM whose QEMU died, calls it directly too: a restart must not wait behind the VM's jobs (a
backup of the dead VM fails anyway), and appliance/vms/ha.py records its own events.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.errors import ConflictError
from vmm.qemu import LAUNCHES_PER_CPU

from ..params import HostVMStartParams, HostVMStopParams, OnHostVM, OnVM, VMStartParams, VMStopParams
from ..plan import JobCancelled, JobKind, JobPlan, Step, StepContext
from ..resources import LAUNCHES, vm_resource
from ..states import Severity

if TYPE_CHECKING:
    from appliance.context import Appliance
    from vmm.hosts import HostVM

T = TypeVar("T")

WAIT_REPORT = 0.5   # seconds between a stop's progress reports while it waits (each also looks for a cancel)

# What a stop's message says of each way it went (QemuDriver.stop's answer, "unknown" on another host).
HOW_STOPPED = {
    "powerdown": "the guest shut down",
    "quit": "QEMU was ended without the guest shutting down",
    "kill": "QEMU did not quit and was killed",
    "already-stopped": "it was not running",
    "unknown": "its host does not say whether the guest shut down or was forced off",
}


def power_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    def vm_exists(params: OnVM) -> None:
        app.vms.spec(params.vm)

    def host_vm_exists(params: OnHostVM) -> None:
        app.hosts.vm(params.host, params.vm)

    return {"vm.start": JobKind(VMStartParams, lambda params: start_plan(app, params), vm_exists),
            "vm.stop": JobKind(VMStopParams, lambda params: stop_plan(app, params), vm_exists),
            "host.vm.start": JobKind(HostVMStartParams, lambda params: host_start_plan(app, params), host_vm_exists),
            "host.vm.stop": JobKind(HostVMStopParams, lambda params: host_stop_plan(app, params), host_vm_exists)}


def say(app: Appliance, ctx: StepContext, vm: str, kind: str, message: str, severity: Severity = Severity.INFO,
        **data: Any) -> None:
    """A message in the job's task log (an event of the job, on the VM)."""
    app.jobs.events.emit(kind, message, severity, resource=vm_resource(vm), job_id=ctx.job_id, data=data or None)


def start_plan(app: Appliance, params: VMStartParams) -> JobPlan:
    async def start(ctx: StepContext) -> None:
        view = await app.vms.start(params.vm, paused=params.paused)
        ctx.result.update(state=view.status.state, host=view.host, pid=view.status.pid)
        process = f" (QEMU pid {view.status.pid})" if view.status.pid else ""
        doing = "set up paused (its guest runs no code until resumed)" if params.paused else "started"
        say(app, ctx, params.vm, "vm.started", f"VM {params.vm} {doing} on host {view.host}{process}", **ctx.result)

    # Nothing to undo: a start that fails leaves nothing running (VMService.start).
    return JobPlan(vm_resource(params.vm), [Step("start", start)],
                   limits={LAUNCHES: LAUNCHES_PER_CPU * (os.cpu_count() or 1)})


def stop_plan(app: Appliance, params: VMStopParams) -> JobPlan:
    vm = params.vm

    async def stop(ctx: StepContext) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        before = app.vms.show(vm).status.state
        graceful = before == "running" and not params.force
        if graceful:
            say(app, ctx, vm, "vm.stopping", f"asked the guest of VM {vm} to shut down (ACPI power button); QEMU is "
                f"ended if it has not within {params.timeout:g} s")
        (view, how), cut_short = await stop_waiting(ctx, app.vms.stop(vm, timeout=params.timeout, force=params.force),
                                                    params.timeout, lambda: app.vms.stop(vm, force=True))
        seconds = round(loop.time() - began, 1)
        ctx.result.update(state=view.status.state, how=how, host=view.host, seconds=seconds)
        say(app, ctx, vm, "vm.stopped", f"VM {vm} {view.status.state} after {seconds:g} s: {HOW_STOPPED[how]}"
            f"{why_forced(params, before, how, cut_short)}",
            Severity.WARNING if graceful and how in ("quit", "kill") else Severity.INFO, **ctx.result)

    # A forced stop does not wait for a graceful one that waits for its guest (see the module).
    return JobPlan(vm_resource(vm), [Step("stop", stop)],
                   cuts_short=frozenset({"vm.stop"}) if params.force else frozenset())


def host_start_plan(app: Appliance, params: HostVMStartParams) -> JobPlan:
    async def start(ctx: StepContext) -> None:
        info = await asyncio.to_thread(app.hosts.start, params.host, params.vm)
        ctx.result.update(state=info.state)
        say(app, ctx, host_vm(params), "vm.started", f"VM {params.vm} started on host {params.host}", **ctx.result)

    return JobPlan(vm_resource(host_vm(params)), [Step("start", start)])


def host_stop_plan(app: Appliance, params: HostVMStopParams) -> JobPlan:
    def force_off() -> HostVM:
        try:
            return app.hosts.stop(params.host, params.vm, params.timeout, force=True)
        except ConflictError:   # the guest shut down in the meantime
            return app.hosts.vm(params.host, params.vm)

    async def stop(ctx: StepContext) -> None:
        began = asyncio.get_running_loop().time()
        if not params.force:
            say(app, ctx, host_vm(params), "vm.stopping", f"asked the guest of VM {params.vm} on host {params.host} to "
                f"shut down (ACPI power button); it is forced off if it has not within {params.timeout:g} s")
        stopping = asyncio.to_thread(app.hosts.stop, params.host, params.vm, params.timeout, params.force)
        info, cut_short = await stop_waiting(ctx, stopping, params.timeout, lambda: asyncio.to_thread(force_off))
        seconds = round(asyncio.get_running_loop().time() - began, 1)
        ctx.result.update(state=info.state, seconds=seconds)
        how = ("forced off, as asked" if params.force else "forced off: the wait for the guest was cut short by a "
               "forced stop, or a cancel" if cut_short else f"shut down by its guest, or forced off past "
               f"{params.timeout:g} s (the host does not say which)")
        say(app, ctx, host_vm(params), "vm.stopped", f"VM {params.vm} on host {params.host} {info.state} after "
            f"{seconds:g} s: {how}", **ctx.result)

    return JobPlan(vm_resource(host_vm(params)), [Step("stop", stop)],
                   cuts_short=frozenset({"host.vm.stop"}) if params.force else frozenset())


def host_vm(params: OnHostVM) -> str:
    """The name a host's VM goes by here (its backups', its resource's)."""
    from appliance.backups.host import backup_vm_name

    return backup_vm_name(params.host, params.vm)


async def stop_waiting(ctx: StepContext, stopping: Awaitable[T], timeout: float,
                       force_off: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
    """What `stopping` answers, its progress reported meanwhile (the share of `timeout` waited);
    and whether it was cut short: if the job is cancelled while it waits (a forced stop cuts it
    short so), `force_off()` ends the VM now, and the waiting stop, which sees it gone, ends too
    (its answer is then force_off's)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    waiting = asyncio.ensure_future(stopping)
    forced: T | None = None
    while not (await asyncio.wait({waiting}, timeout=WAIT_REPORT))[0]:
        try:
            ctx.progress((loop.time() - began) / timeout if timeout else 0.0)
        except JobCancelled:
            forced = await force_off()
            break
    waited = await waiting
    return (waited, False) if forced is None else (forced, True)


def why_forced(params: VMStopParams, before: str, how: str, cut_short: bool) -> str:
    """Why QEMU was ended, when it was, rather than the guest shutting down."""
    if how not in ("quit", "kill"):
        return ""
    if cut_short:
        return " (the wait for the guest was cut short by a forced stop, or a cancel)"
    if params.force:
        return " (forced, as asked)"
    if before == "paused":
        return " (a paused guest cannot answer the power button)"
    return f" (it did not shut down within {params.timeout:g} s: it ignores the power button, or was busy)"
