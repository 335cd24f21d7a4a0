"""What jobs are serialized on: the names of resources and of capacity keys.

A job works on one resource and holds it while it runs (claims.py): a VM (`vm:web1`, also a
host's VM as `vm:web1@kvm1`, the name its backups go by), the store (`store:<location>`), or
a restore's target (`target:<path or URL>`). Capacity keys count jobs across resources.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.context import Appliance

HOST = "host:local"   # one host for now; the key concurrency limits per host count against
# QEMUs setting up at once in this process: each start job runs on its own event loop, whose
# launch slots (QemuDriver._launch_slot) are its alone, so the jobs are capped here instead.
LAUNCHES = "launches:local"


def vm_resource(vm: str) -> str:
    return f"vm:{vm}"


def store_resource(app: Appliance) -> str:
    return f"store:{app.store.location}"


def target_resource(target: str) -> str:
    return f"target:{target}"
