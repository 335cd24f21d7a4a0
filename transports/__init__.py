"""Moving a disk's bytes from a point in time into the store.

A *source* is a read-only view of one disk at one instant, with the map of what is
allocated and (for incrementals) what changed since a checkpoint. Exports create
sources: a fleecing NBD export of a running VM (`fleece`, pull), a copy QEMU pushed
into qemu-nbd targets or into files on an sshfs mount (`push`, `sshfs`), or qemu-nbd
over the image files of a stopped VM (`offline`). The running-VM exports share one
freezing transaction and the checkpoint bookkeeping (`live`); `guest_agent` freezes
the guest's filesystems around it. `ingest` copies a source into a `dedup` disk
writer, reading only what it has to, in pieces that never cross the store's blocks.
"""
from .extents import Extent, Piece, pieces
from .ingest import BlockSink, IngestStats, ingest_disk
from .nbd_source import NbdSource, SourceError

__all__ = ["BlockSink", "Extent", "IngestStats", "NbdSource", "Piece", "SourceError", "ingest_disk", "pieces"]
