"""Moving a disk's bytes from a point in time into the store.

A *source* is a read-only view of one disk at one instant, with the map of what is
allocated and (for incrementals) what changed since a checkpoint. Exports create
sources: a fleecing NBD export of a running VM (`fleece`), or qemu-nbd over the
image files of a stopped VM (`offline`). `ingest` copies a source into a
`dedup` disk writer, reading only what it has to.
"""
from .extents import Extent, ChunkPlan
from .nbd_source import NbdSource, SourceError
from .ingest import ingest_disk, IngestStats

__all__ = ["Extent", "ChunkPlan", "NbdSource", "SourceError", "ingest_disk", "IngestStats"]
