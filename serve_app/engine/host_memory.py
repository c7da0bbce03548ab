"""Keeps freed host memory in the process's heap, so the tensors of the next engine step
reuse pages that are already mapped.

glibc serves large allocations (above a threshold that adapts up to 32 MiB) with fresh
`mmap`s and returns them to the OS on free, and trims the heap top when it grows past a
threshold. A CPU engine step allocates and frees tens of MiB of activations; with those
defaults every step faults all of their pages in again. On the `bench` workload that was
570,000 minor page faults and 2.3 s of kernel time in a 17.6 s run (bench/README.md).
Raising both thresholds leaves the memory in the heap for reuse; the process's resident
size then stays at its peak step's working set, which a serving process holds anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
HEAP_THRESHOLD_BYTES = 1 << 30  # allocations below this come from the heap, and stay


def keep_freed_host_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False (and a debug log) on another libc."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        logger.debug("no glibc mallopt (libc %s): host allocations keep their defaults", path)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(M_MMAP_THRESHOLD, HEAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, HEAP_THRESHOLD_BYTES)
    )
