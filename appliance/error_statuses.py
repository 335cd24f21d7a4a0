"""What each kind of error answers, in one table: the web API's HTTP status (which its OpenAPI
declares) and, for the command line, whether an error is one to report in words (any error of
the table) rather than a fault of Cairn's (a traceback).

The appliance's own errors (appliance.errors.CairnError and its kinds) carry their status. The
packages below the appliance (vmm, chain, restore, transports, dedup) know nothing of HTTP, so
their errors get theirs here, once: no route translates an error itself.

Entries name their class by module and name, and are looked up only in modules already
imported: an error can only come from one of those, and importing the others would cost every
`cairn` command their start-up time.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator

from .errors import CairnError

# (module, class, status), the more specific first: an error answers the status of the first
# entry it is an instance of. Each package's last entry is its root: what is left of it.
TABLE: tuple[tuple[str, str, int], ...] = (
    # QEMU, its images, networks and other hosts (vmm)
    ("vmm.errors", "VMSpecError", 422),            # a definition or name QEMU must not be given
    ("vmm.errors", "VMStateError", 409),           # running, stopped, paused: not in this state
    ("vmm.errors", "VMBusyError", 409),            # another start or stop of it is under way
    ("vmm.images_library", "ImageChecksumError", 409),
    ("vmm.placement", "PlacementError", 409),      # a scheduling group's rule forbids it
    ("vmm.hosts", "HostVMNotFoundError", 404),
    ("vmm.hosts", "HostVMStateError", 409),
    ("vmm.hosts", "HostUnreachableError", 502),    # the other host did not answer
    ("vmm.fencing", "FenceError", 409),            # no proof yet that a silent host's VM stopped there
    ("vmm.migration", "MigrationError", 409),      # not migrated: it runs on where it ran
    ("vmm.errors", "VMError", 400),                # anything else QEMU, qemu-img or `ip` refused
    # Snapshot trees (chain)
    ("chain.errors", "UnknownSnapshotError", 404),
    ("chain.errors", "ChainError", 409),           # a tree's shape or its disks forbid it now
    # Restores (restore)
    ("restore.files", "FileNotInBackupError", 404),
    ("restore.errors", "CorruptBackupError", 500),  # the backup's data is damaged: the appliance's fault
    ("restore.errors", "VerifyError", 500),
    ("restore.errors", "RestoreError", 409),       # a target that exists, is too small, a partition missing
    # Exports of a VM's disks, and the sources they read (transports)
    ("transports.errors", "ExportError", 409),
    ("transports.nbd_source", "SourceError", 502),
    ("transports.guest_agent", "GuestAgentError", 502),
    # The store (dedup)
    ("dedup.errors", "BackupNotFoundError", 404),
    ("dedup.errors", "DiskNotFoundError", 404),
    ("dedup.errors", "StoreConfigError", 422),
    ("dedup.errors", "InvalidNameError", 422),
    ("dedup.errors", "RetentionRuleError", 422),
    ("dedup.errors", "LockDateError", 422),       # a retention lock's date: no time zone, or not ahead
    ("dedup.errors", "StoreLocationError", 422),
    ("dedup.errors", "StoreBusyError", 409),
    ("dedup.errors", "BackupExistsError", 409),
    ("dedup.errors", "StoreFormatError", 409),     # a format-1 store wants `cairn store upgrade` first
    ("dedup.errors", "GcUnsafeError", 409),
    ("dedup.errors", "BackupLockedError", 409),    # under a retention lock until its date
    ("dedup.errors", "StoreMismatchError", 409),   # a sync target of another block size or key
    ("dedup.errors", "StoreFullError", 507),       # a pool quota, a full cluster or bucket
    ("dedup.errors", "PassphraseRequiredError", 423),  # locked: the store needs its passphrase
    ("dedup.errors", "KeyFileError", 403),         # a wrong passphrase, or the key of another store
    ("dedup.errors", "StoreUnreachableError", 503),
    ("dedup.errors", "StoreError", 500),           # a damaged store is the appliance's fault
    # Parameters a route builds from what it was given (a job's, from its path and body) that do
    # not validate: the request's fault, like a body that does not.
    ("pydantic_core", "ValidationError", 422),
)

INTERNAL = 500   # an error of no kind in the table: a fault of Cairn's


def _classes(imported_only: bool = True) -> Iterator[tuple[type[Exception], int]]:
    for module, name, status in TABLE:
        if module in sys.modules or not imported_only:
            if module not in sys.modules:
                __import__(module)
            yield getattr(sys.modules[module], name), status


def status_of(e: BaseException) -> int | None:
    """The status `e` answers, or None for an error of no kind in the table (a fault of Cairn's)."""
    if isinstance(e, CairnError):
        return e.status
    return next((status for cls, status in _classes() if isinstance(e, cls)), None)


def is_reported(e: BaseException) -> bool:
    """Whether `e` is an error to report in its own words: one of the table's kinds."""
    return status_of(e) is not None


def roots() -> list[type[Exception]]:
    """The root of each package's errors and CairnError: what the web API translates (importing
    them all: the API does anyway)."""
    classes = [cls for cls, _ in _classes(imported_only=False)]
    return [CairnError, *(cls for cls in classes if not any(other is not cls and issubclass(cls, other)
                                                            for other in classes))]


def statuses(*kinds: type[Exception]) -> set[int]:
    """Every status an error of these kinds can answer, sub-kinds included: what a route that
    raises them declares."""
    entries = list(_classes(imported_only=False))
    found: set[int] = set()
    for kind in kinds:
        if issubclass(kind, CairnError):
            found |= {cls.status for cls in _subclasses(kind)}
            continue
        found |= {status for cls, status in entries if issubclass(cls, kind)}   # its own and the more specific
        found |= {next(status for cls, status in entries if issubclass(kind, cls))}   # or its nearest above
    return found


def _subclasses(kind: type[CairnError]) -> Iterator[type[CairnError]]:
    yield kind
    for sub in kind.__subclasses__():
        yield from _subclasses(sub)
