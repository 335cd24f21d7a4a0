"""The appliance's job kinds, one module per domain: backups (of its own VMs and of other hosts'),
snapshots, restores (into libvirt too), VMs started and stopped, clones, migrations, the store's
upkeep and off-site copies. `params.PARAMS` names what each takes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..plan import JobKind
from .backup import backup_kinds
from .clone import clone_kinds
from .libvirt import libvirt_kinds
from .migrate import migrate_kinds
from .power import power_kinds
from .restore import restore_kinds
from .snapshot import snapshot_kinds
from .store import store_kinds
from .sync import sync_kinds

if TYPE_CHECKING:
    from appliance.context import Appliance


def standard_kinds(app: Appliance) -> dict[str, JobKind[Any]]:
    return {**backup_kinds(app), **snapshot_kinds(app), **restore_kinds(app), **libvirt_kinds(app), **clone_kinds(app),
            **power_kinds(app), **migrate_kinds(app), **store_kinds(app), **sync_kinds(app)}
