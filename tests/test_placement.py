"""Placement: the four scenarios of nSSV 4.1.4.1.1, each mandatory and preferred, with and
without room on the favoured hosts; plus resources, ranking and bad groups. Pure logic."""
from __future__ import annotations

import pytest

from vmm.placement import Host, HostResources, PlacementError, SchedulingGroup, measure, place

ROOM, FULL = 8192, 100   # free MiB of a host with room for the 1 GiB VM, and of a full one
NEED = 1024


def hosts(**free: int) -> list[Host]:
    return [Host(name, mib, cpus=4, load=0.5) for name, mib in free.items()]


def group(policy: str, enforcement: str, vms: set[str], hosts: frozenset[str] = frozenset()):
    g = SchedulingGroup("A", policy, enforcement, frozenset(vms), hosts)  # type: ignore[arg-type]
    g.validate()
    return g


# Scenario 1: VM exclusive from each other. VM1 on Host1, VM2 on Host2, VM3 joins.
S1_PLACED = {"vm1": "host1", "vm2": "host2"}


@pytest.mark.parametrize("enforcement", ["mandatory", "preferred"])
def test_scenario1_vm_anti_affinity_host3_has_room(enforcement):
    g = group("vm-anti-affinity", enforcement, {"vm1", "vm2", "vm3"})
    chosen = place("vm3", NEED, hosts(host1=ROOM, host2=ROOM, host3=ROOM), S1_PLACED, [g])
    assert chosen.host == "host3" and chosen.unmet_preferences == ()


def test_scenario1_vm_anti_affinity_hard_host3_full_cannot_start():
    g = group("vm-anti-affinity", "mandatory", {"vm1", "vm2", "vm3"})
    with pytest.raises(PlacementError, match=r"needs 1024 MiB.*host3 has 100 MiB free"):
        place("vm3", NEED, hosts(host1=ROOM, host2=ROOM, host3=FULL), S1_PLACED, [g])


def test_scenario1_vm_anti_affinity_soft_host3_full_runs_on_host2():
    g = group("vm-anti-affinity", "preferred", {"vm1", "vm2", "vm3"})
    chosen = place("vm3", NEED, hosts(host1=ROOM, host2=ROOM + 1, host3=FULL), S1_PLACED, [g])
    assert chosen.host == "host2" and chosen.unmet_preferences == ("A",)


# Scenario 2: VM affinitive to each other. VM1 and VM2 on Host1, VM3 joins.
S2_PLACED = {"vm1": "host1", "vm2": "host1"}


@pytest.mark.parametrize("enforcement", ["mandatory", "preferred"])
def test_scenario2_vm_affinity_host1_has_room(enforcement):
    g = group("vm-affinity", enforcement, {"vm1", "vm2", "vm3"})
    # host2 has more room, yet the policy keeps VM3 beside its group.
    assert place("vm3", NEED, hosts(host1=ROOM, host2=4 * ROOM), S2_PLACED, [g]).host == "host1"


def test_scenario2_vm_affinity_hard_host1_full_cannot_start():
    g = group("vm-affinity", "mandatory", {"vm1", "vm2", "vm3"})
    with pytest.raises(PlacementError, match=r"host1 has 100 MiB free"):
        place("vm3", NEED, hosts(host1=FULL, host2=ROOM), S2_PLACED, [g])


def test_scenario2_vm_affinity_soft_host1_full_runs_on_host2():
    g = group("vm-affinity", "preferred", {"vm1", "vm2", "vm3"})
    chosen = place("vm3", NEED, hosts(host1=FULL, host2=ROOM), S2_PLACED, [g])
    assert chosen.host == "host2" and chosen.unmet_preferences == ("A",)


# Scenario 3: VMs exclusive from hosts. VM1, VM2 on Host1; host group A = {Host2, Host3}.
S3_PLACED = {"vm1": "host1", "vm2": "host1", "x1": "host2", "x2": "host2", "x3": "host3",
             "x4": "host3"}
S3_HOSTS = frozenset({"host2", "host3"})


@pytest.mark.parametrize("enforcement", ["mandatory", "preferred"])
def test_scenario3_vm_host_anti_affinity_host1_has_room(enforcement):
    g = group("vm-host-anti-affinity", enforcement, {"vm1", "vm2", "vm3"}, S3_HOSTS)
    chosen = place("vm3", NEED, hosts(host1=ROOM, host2=4 * ROOM, host3=4 * ROOM), S3_PLACED, [g])
    assert chosen.host == "host1"


def test_scenario3_vm_host_anti_affinity_hard_host1_full_cannot_start():
    g = group("vm-host-anti-affinity", "mandatory", {"vm1", "vm2", "vm3"}, S3_HOSTS)
    with pytest.raises(PlacementError, match=r"allowed by A \(vm-host-anti-affinity\)"):
        place("vm3", NEED, hosts(host1=FULL, host2=ROOM, host3=ROOM), S3_PLACED, [g])


def test_scenario3_vm_host_anti_affinity_soft_host1_full_runs_on_host2():
    g = group("vm-host-anti-affinity", "preferred", {"vm1", "vm2", "vm3"}, S3_HOSTS)
    chosen = place("vm3", NEED, hosts(host1=FULL, host2=ROOM + 1, host3=ROOM), S3_PLACED, [g])
    assert chosen.host == "host2" and chosen.unmet_preferences == ("A",)


# Scenario 4: VMs affinitive to hosts. VM1..VM5 on Host2 and Host3 = host group A; VM6 joins.
S4_PLACED = {"vm1": "host2", "vm2": "host2", "vm3": "host3", "vm4": "host3", "vm5": "host3"}
S4_VMS = {"vm1", "vm2", "vm3", "vm4", "vm5", "vm6"}
S4_HOSTS = frozenset({"host2", "host3"})


@pytest.mark.parametrize("enforcement", ["mandatory", "preferred"])
@pytest.mark.parametrize(("host2", "host3", "expected"), [(ROOM, FULL, "host2"),
                                                         (FULL, ROOM, "host3")])
def test_scenario4_vm_host_affinity_a_group_host_has_room(enforcement, host2, host3, expected):
    g = group("vm-host-affinity", enforcement, S4_VMS, S4_HOSTS)
    chosen = place("vm6", NEED, hosts(host1=4 * ROOM, host2=host2, host3=host3), S4_PLACED, [g])
    assert chosen.host == expected


def test_scenario4_vm_host_affinity_hard_group_hosts_full_cannot_start():
    g = group("vm-host-affinity", "mandatory", S4_VMS, S4_HOSTS)
    with pytest.raises(PlacementError, match="cannot start"):
        place("vm6", NEED, hosts(host1=ROOM, host2=FULL, host3=FULL), S4_PLACED, [g])


def test_scenario4_vm_host_affinity_soft_group_hosts_full_runs_on_host1():
    g = group("vm-host-affinity", "preferred", S4_VMS, S4_HOSTS)
    chosen = place("vm6", NEED, hosts(host1=ROOM, host2=FULL, host3=FULL), S4_PLACED, [g])
    assert chosen.host == "host1" and chosen.unmet_preferences == ("A",)


# -- beyond the scenarios -----------------------------------------------------------------------

def test_without_groups_the_least_loaded_host_with_most_memory_wins():
    busy = Host("busy", 16384, cpus=2, load=3.0)
    calm = Host("calm", 4096, cpus=2, load=0.2)
    roomy = Host("roomy", 8192, cpus=2, load=0.2)
    assert place("v", NEED, [busy, calm, roomy], {}, []).host == "roomy"
    with pytest.raises(PlacementError, match="needs 32768 MiB"):
        place("v", 32768, [busy, calm, roomy], {}, [])
    with pytest.raises(PlacementError, match="no host"):
        place("v", NEED, [], {}, [])


def test_groups_of_other_vms_do_not_apply_and_mandatory_rules_combine():
    other = group("vm-anti-affinity", "mandatory", {"a", "b"})
    assert place("c", NEED, hosts(h1=ROOM), {"a": "h1"}, [other]).host == "h1"
    apart = SchedulingGroup("apart", "vm-anti-affinity", "mandatory", frozenset({"a", "c"}))
    only_h1 = SchedulingGroup("pin", "vm-host-affinity", "mandatory", frozenset({"c"}),
                              frozenset({"h1"}))
    with pytest.raises(PlacementError, match="leave no host"):
        place("c", NEED, hosts(h1=ROOM, h2=ROOM), {"a": "h1"}, [apart, only_h1])


def test_invalid_groups_are_refused_clearly():
    for policy, enforcement, host_group, message in [
        ("vm-affinity", "always", frozenset(), "enforcement 'always'"),
        ("vm-friends", "mandatory", frozenset(), "policy 'vm-friends'"),
        ("vm-host-affinity", "mandatory", frozenset(), "needs a host scheduling group"),
        ("vm-affinity", "mandatory", frozenset({"h1"}), "takes no hosts"),
    ]:
        with pytest.raises(PlacementError, match=message):
            SchedulingGroup("g", policy, enforcement, frozenset({"a"}), host_group).validate()  # type: ignore[arg-type]


def test_this_machine_is_measured_and_its_guests_memory_counted_as_taken():
    me = measure().as_host("local")
    assert me.name == "local" and me.free_memory_mib > 0 and me.cpus >= 1 and me.load >= 0
    # 3 GiB available, guests still to take 1 GiB of what they were given: 2 GiB free; never below 0.
    assert HostResources(3072, 4, 0.5).as_host("h", owed_mib=1024).free_memory_mib == 2048
    assert HostResources(512, 4, 0.5).as_host("h", owed_mib=1024).free_memory_mib == 0
