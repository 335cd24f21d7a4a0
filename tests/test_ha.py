"""HA: SIGKILL the QEMU of an HA VM and it comes back; kill it again and again and the
supervisor gives up (recorded as an event). A VM stopped on purpose stays stopped."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from backup_helpers import new_guest_vm, run, wait_serial
from sqlalchemy import select
from test_vm_lifecycle import wait_for

from appliance.jobs.records import EventRecord
from vmm.ha import FlapGuard, RestartLimit


def test_flap_guard_counts_restarts_in_a_sliding_window():
    now = [0.0]
    guard = FlapGuard(clock=lambda: now[0])
    limit = RestartLimit(max_restarts=2, window_seconds=10)
    assert guard.admit("a", limit) == 1
    now[0] = 5
    assert guard.admit("a", limit) == 2
    assert guard.admit("a", limit) is None          # a third within 10 s: flapping
    assert guard.admit("b", limit) == 1             # per VM
    now[0] = 10.5                                   # the first restart left the window
    assert guard.admit("a", limit) == 2


def events(appliance, kind: str) -> list[EventRecord]:
    with appliance.catalog() as s:
        return list(s.scalars(select(EventRecord).where(EventRecord.kind == kind)))


def kill_qemu(appliance, name: str) -> int:
    pid = appliance.driver.status(name).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


def test_killed_vm_is_restarted_until_it_flaps(appliance, guest_kernel):
    new_guest_vm(appliance, guest_kernel, "ha1", [128 << 20])
    appliance.vms.set_ha("ha1", True, max_restarts=2, window_seconds=600)
    run(appliance.vms.start("ha1"))
    wait_serial(appliance, "ha1", "CAIRN: READY")
    with appliance.vms.supervised(interval=0.2):
        for restart in (1, 2):
            old = kill_qemu(appliance, "ha1")
            status = wait_for(lambda o=old: (s := appliance.driver.status("ha1")).state == "running"
                              and s.pid != o and s, what=f"restart {restart}")
            assert status.pid != old
            wait_serial(appliance, "ha1", "CAIRN: READY")      # a real boot, not just a process
            # Recorded once the start returns, which under load can be after the guest booted.
            wait_for(lambda n=restart: len(events(appliance, "vm.ha.restarted")) >= n, what=f"event of restart {restart}")
            assert len(events(appliance, "vm.ha.restarted")) == restart
        kill_qemu(appliance, "ha1")
        gave_up = wait_for(lambda: events(appliance, "vm.ha.gave_up"), what="giving up")
    assert "more than 2 times" in gave_up[0].message and gave_up[0].resource == "vm:ha1"
    assert appliance.driver.status("ha1").state == "crashed"
    view = appliance.vms.show("ha1")
    assert view.ha is False and len(events(appliance, "vm.ha.restarted")) == 2


def test_a_vm_stopped_on_purpose_is_not_restarted(appliance, guest_kernel):
    new_guest_vm(appliance, guest_kernel, "ha2", [128 << 20])
    appliance.vms.set_ha("ha2", True)
    run(appliance.vms.start("ha2"))
    wait_serial(appliance, "ha2", "CAIRN: READY")
    with appliance.vms.supervised(interval=0.2) as supervisor:
        run(appliance.vms.stop("ha2", force=True))
        run(supervisor.check())
        assert appliance.driver.status("ha2").state == "stopped"
    assert events(appliance, "vm.ha.restarted") == []


def test_the_app_runs_the_supervisor(api_client, appliance, guest_kernel):
    new_guest_vm(appliance, guest_kernel, "ha3", [128 << 20])
    r = api_client.put("/api/v1/vms/ha3/ha", json={"enabled": True, "max_restarts": 5, "window_seconds": 60})
    assert r.status_code == 200 and r.json()["ha"] is True
    assert api_client.post("/api/v1/vms/ha3/start").status_code == 200
    wait_serial(appliance, "ha3", "CAIRN: READY")
    with api_client:                       # the app's lifespan: what `cairn serve` runs
        old = kill_qemu(appliance, "ha3")
        wait_for(lambda: (s := appliance.driver.status("ha3")).state == "running" and s.pid != old,
                 what="the restart")
    assert [e.resource for e in events(appliance, "vm.ha.restarted")] == ["vm:ha3"]


def test_a_failed_restart_gives_up_with_the_reason(appliance, guest_kernel):
    new_guest_vm(appliance, guest_kernel, "ha4", [128 << 20])
    appliance.vms.set_ha("ha4", True)
    run(appliance.vms.start("ha4"))
    kill_qemu(appliance, "ha4")
    wait_for(lambda: appliance.driver.status("ha4").state == "crashed", what="the crash")
    Path(appliance.vms.spec("ha4").disks[0].path).unlink()       # nothing left to start from
    run(appliance.vms.ha_supervisor().check())
    [gave_up] = events(appliance, "vm.ha.gave_up")
    assert "restart failed" in gave_up.message and "does not exist" in gave_up.message
    assert appliance.vms.show("ha4").ha is False
