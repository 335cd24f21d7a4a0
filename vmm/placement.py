"""Choosing the host a VM runs on: resources first, then the scheduling policies of its groups.

Pure logic (no I/O besides measure()), following nSSV 4.1.4.1.1. A VM scheduling group is
bound to one of four policies, each enforced "mandatory" or "preferred":

  vm-anti-affinity       members run on different hosts            (VM exclusive from each other)
  vm-affinity            members run on the same host              (VM affinitive to each other)
  vm-host-anti-affinity  members avoid the group's hosts           (VMs exclusive from hosts)
  vm-host-affinity       members run on the group's hosts          (VMs affinitive to hosts)

A mandatory policy narrows the hosts a VM may use; if none of them has the resources the VM
does not start. A preferred policy ranks the hosts it favours first, and lets the VM fall back
to any other host with the resources. Among equally favoured hosts the least loaded one with
the most free memory wins.

A host's free memory is the kernel's MemAvailable less what its running guests were given and
have not taken yet (HostResources.as_host): a guest touches its memory as it goes, so
MemAvailable alone would count as free the memory a freshly booted guest takes later.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .errors import VMError

PolicyKind = Literal["vm-anti-affinity", "vm-affinity", "vm-host-anti-affinity",
                     "vm-host-affinity"]
POLICY_KINDS: tuple[PolicyKind, ...] = ("vm-anti-affinity", "vm-affinity",
                                        "vm-host-anti-affinity", "vm-host-affinity")
Enforcement = Literal["mandatory", "preferred"]
ENFORCEMENTS: tuple[Enforcement, ...] = ("mandatory", "preferred")
LOCAL_HOST = "local"


class PlacementError(VMError):
    """No host may run the VM; the message says which rule or resource ruled each one out."""


@dataclass(frozen=True)
class Host:
    name: str
    free_memory_mib: int
    cpus: int
    load: float  # 1-minute load average

    @property
    def overloaded(self) -> bool:
        return self.load >= self.cpus


@dataclass(frozen=True)
class SchedulingGroup:
    """A VM scheduling group bound to a policy; `hosts` is the host scheduling group that the
    two VM-host policies name (and the other two must leave empty)."""

    name: str
    policy: PolicyKind
    enforcement: Enforcement
    vms: frozenset[str]
    hosts: frozenset[str] = field(default_factory=frozenset)

    def validate(self) -> None:
        if self.policy not in POLICY_KINDS:
            raise PlacementError(f"group {self.name!r}: policy {self.policy!r} is not one of "
                                 f"{', '.join(POLICY_KINDS)}")
        if self.enforcement not in ENFORCEMENTS:
            raise PlacementError(f"group {self.name!r}: enforcement {self.enforcement!r} is "
                                 f"not one of {', '.join(ENFORCEMENTS)}")
        with_hosts = self.policy in ("vm-host-anti-affinity", "vm-host-affinity")
        if with_hosts and not self.hosts:
            raise PlacementError(f"group {self.name!r}: policy {self.policy} needs a host "
                                 "scheduling group (hosts)")
        if not with_hosts and self.hosts:
            raise PlacementError(f"group {self.name!r}: policy {self.policy} takes no hosts")

    def favoured(self, vm: str, hosts: Iterable[str], placements: Mapping[str, str]) -> set[str]:
        """The hosts this policy wants `vm` on, given where the other members run."""
        all_hosts = set(hosts)
        peers = {placements[m] for m in self.vms if m != vm and m in placements}
        if self.policy == "vm-anti-affinity":
            return all_hosts - peers
        if self.policy == "vm-affinity":
            return peers & all_hosts if peers else all_hosts
        if self.policy == "vm-host-anti-affinity":
            return all_hosts - self.hosts
        return all_hosts & self.hosts


@dataclass(frozen=True)
class HostResources:
    """What a host has, measured there (measure()): available memory in MiB, CPUs, 1-minute load."""

    available_mib: int
    cpus: int
    load: float

    def as_host(self, name: str, owed_mib: int = 0) -> Host:
        """The host as placement sees it, its running guests still to take `owed_mib`."""
        return Host(name, max(self.available_mib - owed_mib, 0), self.cpus, self.load)


@dataclass(frozen=True)
class Placement:
    host: str
    # Preferred policies the choice could not honour (e.g. the favoured host was full).
    unmet_preferences: tuple[str, ...] = ()


def place(vm: str, memory_mib: int, hosts: Iterable[Host], placements: Mapping[str, str],
          groups: Iterable[SchedulingGroup], unusable: Mapping[str, str] | None = None) -> Placement:
    """The host for `vm` (which needs memory_mib), given where other VMs run (placements:
    VM name -> host name) and all scheduling groups; PlacementError if there is none.
    `unusable` names the hosts ruled out before placement, and why (they did not answer, they
    do not see the VM's disks): the error lists them too."""
    hosts = list(hosts)
    names = [h.name for h in hosts]
    mine = [g for g in groups if vm in g.vms]
    allowed = set(names)
    for group in mine:
        if group.enforcement == "mandatory":
            allowed &= group.favoured(vm, names, placements)
    fitting = [h for h in hosts if h.name in allowed and h.free_memory_mib >= memory_mib]
    if not fitting:
        reason = _explain(vm, memory_mib, hosts, allowed, mine)
        if unusable:
            reason += "; " + "; ".join(f"{host} {why}" for host, why in sorted(unusable.items()))
        raise PlacementError(reason)
    preferred = [g for g in mine if g.enforcement == "preferred"]
    favoured_by = {g.name: g.favoured(vm, names, placements) for g in preferred}

    def rank(host: Host) -> tuple[int, bool, int, float]:
        honoured = sum(host.name in favoured for favoured in favoured_by.values())
        return (-honoured, host.overloaded, -host.free_memory_mib, host.load)

    best = min(fitting, key=rank)
    unmet = tuple(sorted(g for g, favoured in favoured_by.items() if best.name not in favoured))
    return Placement(best.name, unmet)


def _explain(vm: str, memory_mib: int, hosts: list[Host], allowed: set[str],
             groups: list[SchedulingGroup]) -> str:
    if not hosts:
        return f"no host to run VM {vm!r} on"
    mandatory = [f"{g.name} ({g.policy})" for g in groups if g.enforcement == "mandatory"]
    if not allowed:
        return (f"VM {vm!r} cannot start: the mandatory policies of its groups "
                f"{', '.join(mandatory)} leave no host")
    short = ", ".join(f"{h.name} has {h.free_memory_mib} MiB free" for h in hosts
                      if h.name in allowed)
    rules = f" (allowed by {', '.join(mandatory)})" if mandatory else ""
    return (f"VM {vm!r} cannot start: it needs {memory_mib} MiB of memory and no allowed "
            f"host{rules} has it: {short}")


def measure() -> HostResources:
    """This machine's memory, CPUs and load right now (the agent runs it on its host)."""
    available_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available_kib = int(line.split()[1])
                break
    return HostResources(available_kib // 1024, os.cpu_count() or 1, os.getloadavg()[0])

