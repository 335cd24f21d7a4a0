"""Listing VMs: filtered, sorted and paged in the catalog, each with its live state from its host.

Light on purpose (the VMs' tables and vmm's driver only): `cairn vm list` and the API's listing
use it without loading what defines, places and networks VMs (service.py); the hosts besides
this one are reached only when a listed VM sits on one of them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Integer, Select, String, case, literal, select, type_coerce
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.paging import fetch_page, page_statement
from appliance.catalog.query import HasHeaders, ListQuery
from appliance.errors import CairnError
from vmm import QemuDriver, VMSpec, VMStatus
from vmm.placement import LOCAL_HOST

from .records import VMOptionsRecord, VMRecord

if TYPE_CHECKING:
    from appliance.hosts.pool import HostPool


@dataclass
class VMView:
    spec: VMSpec
    status: VMStatus
    ha: bool = False
    linked_to: str | None = None
    host: str = LOCAL_HOST               # where it runs, or last ran
    compute_pool: str | None = None      # the hosts placement may choose from (None: here only)

    @classmethod
    def of(cls, spec: VMSpec, opts: VMOptionsRecord | None, host: str, status: VMStatus) -> VMView:
        return cls(spec, status, ha=bool(opts and opts.ha_enabled), linked_to=opts.linked_to if opts else None,
                   host=host, compute_pool=opts.compute_pool if opts else None)

    def to_dict(self) -> dict:
        return {**self.spec.to_dict(), "state": self.status.state, "pid": self.status.pid,
                "ha": self.ha, "linked_to": self.linked_to, "host": self.host,
                "compute_pool": self.compute_pool}


class VMListing:
    """`host_pool`: the hosts besides this one (asked for only when a VM sits on one of them)."""

    def __init__(self, catalog: sessionmaker[Session], driver: QemuDriver, host_pool: Callable[[], HostPool]):
        self.catalog = catalog
        self.driver = driver
        self.host_pool = host_pool

    def page(self, query: ListQuery, where: ColumnElement[bool] | None = None,
             response: HasHeaders | None = None) -> list[VMView]:
        """The VMs `query` asks for, among those `where` selects (the caller's visible ones), by
        name unless it sorts otherwise: filtered, sorted and paged in the catalog, by any of
        _listed_fields(). Live states come from each VM's host: this machine's driver's index of
        the VMs not stopped, each other host asked once."""
        # Every VM's live state if the query filters or sorts by it, else only the page's (a
        # status() for each of them marked live: none for most).
        live_fields = query.names("state") or query.names("pid")
        with self.catalog() as s:
            active = self._active(s) if live_fields else {}
            records = fetch_page(s, self.statement(query, active, where), response)
            opts = {o.vm_name: o for o in s.scalars(
                select(VMOptionsRecord).where(VMOptionsRecord.vm_name.in_([r.name for r in records])))}
        if not live_fields:
            active = self._active_among({r.name: r.host for r in records})
        return [VMView.of(VMSpec.from_dict(r.spec), opts.get(r.name), r.host,
                          active.get(r.name) or VMStatus(r.name, "stopped", None, None)) for r in records]

    @staticmethod
    def statement(query: ListQuery, active: dict[str, VMStatus], where: ColumnElement[bool] | None = None
                  ) -> Select[Any]:
        """The SELECT of page(), the live states being `active` (_active())."""
        stmt = select(VMRecord) if where is None else select(VMRecord).where(where)
        return page_statement(query, VMRecord, stmt, _listed_fields(active))

    def _active(self, session: Session) -> dict[str, VMStatus]:
        """Every VM not stopped, by name: this machine's from its driver's index, the others'
        as their hosts say."""
        elsewhere = {name: host for name, host in session.execute(
            select(VMRecord.name, VMRecord.host).where(VMRecord.host != LOCAL_HOST))}
        return {**self.driver.active(), **self._active_among(elsewhere, local=False)}

    def _active_among(self, hosts: dict[str, str], local: bool = True) -> dict[str, VMStatus]:
        """The VMs of `hosts` (VM -> its host) not stopped, by name: each host asked once, and
        those of a host that does not answer "unknown". `local=False`: skip this machine's."""
        marked = self.driver.marked_live() if local else set()
        found = {name: self.driver.status(name) for name, host in hosts.items() if host == LOCAL_HOST and name in marked}
        for host in {h for h in hosts.values() if h != LOCAL_HOST}:
            statuses = self.statuses_on(host)
            found |= {name: status_in(statuses, name) for name, on in hosts.items() if on == host}
        return found

    def statuses_on(self, host: str) -> dict[str, VMStatus] | None:
        """What `host` runs (any VM not in it is stopped), or None if it does not answer (or is
        no longer registered)."""
        try:
            return self.host_pool().statuses(host)
        except CairnError:
            return None


def status_in(statuses: dict[str, VMStatus] | None, name: str) -> VMStatus:
    """A VM's state among what its host runs (None: the host did not answer)."""
    if statuses is None:
        return VMStatus(name, "unknown", None, None)
    return statuses.get(name) or VMStatus(name, "stopped", None, None)


def _listed_fields(active: dict[str, VMStatus]) -> dict[str, ColumnElement[Any]]:
    """What a VM listing filters and sorts by, as SQL: its definition's numbers, read from the
    spec's JSON, and its live state and pid, known outside the catalog: a CASE of one branch per
    value (`name IN (...)`, the VMs not stopped: few, whatever the number of VMs)."""
    def live(value: Callable[[VMStatus], Any], otherwise: Any, sql_type: Any) -> ColumnElement[Any]:
        names: dict[Any, list[str]] = {}
        for name, status in active.items():
            names.setdefault(value(status), []).append(name)
        if not names:
            return literal(otherwise, sql_type)
        return type_coerce(case(*((VMRecord.name.in_(these), literal(v, sql_type)) for v, these in names.items()),
                                else_=literal(otherwise, sql_type)), sql_type)
    return {"name": VMRecord.name, "state": live(lambda st: st.state, "stopped", String()),
            "pid": live(lambda st: st.pid, None, Integer()),
            "vcpus": VMRecord.spec["vcpus"].as_integer(), "memory_mib": VMRecord.spec["memory_mib"].as_integer(),
            "disks": VMRecord.spec["disks"]}
