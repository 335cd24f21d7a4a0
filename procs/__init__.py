"""Helper processes (qemu-nbd, nbdkit, nbdfuse, ssh, sshfs) tied to the process they work for.

Cairn starts helpers to serve or reach disks; a Cairn process killed mid-operation must leave
none of them running, nor what they held: a qemu-nbd would keep a stopped VM's disk locked, a
file browser's mounts and loop devices would stay. Two mechanisms, one for each half:

- spawn.py: a helper dies with its owner (the kernel's parent-death signal), from a thread
  that lives as long as the process, in a process group of its own.
- holding.py and sweep.py: what a piece of work holds (helpers, mounts, loop devices, files) is
  recorded with its owner's identity (identity.py: pid, start time, boot); every Cairn start
  sweeps the records of owners that are gone and releases what they name.

Helpers that must outlive the process that started them (an instant restore's export, which
the VM reads) are handed over to the process they serve and swept once it is gone.

Imports nothing from the rest of Cairn: every package that starts helpers may use it.
"""

from .holding import Holding, registry_dir
from .identity import ProcessId
from .spawn import start_helper
from .sweep import sweep

__all__ = ["Holding", "ProcessId", "registry_dir", "start_helper", "sweep"]
