"""Keep block-sized buffers warm.

glibc serves an allocation above its mmap threshold with a fresh mmap and unmaps it on
free, so such a buffer is page-faulted in again each time (measured at about 30 ms per
64 MiB in a VM, when Cairn's chunks were that big; a restore's 16 MiB pack reads and the
blocks and frames of every worker are the same story at a smaller scale). With one arena,
a high mmap threshold and a trim threshold that keeps a few hundred MiB of free heap, a
freed buffer is reused as it is. The setting is process-wide, so it is made once, before
threads allocate.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@functools.cache
def keep_buffers_warm() -> bool:
    """True if the allocator was tuned (glibc), False where it does not apply."""
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 512 << 20)))
