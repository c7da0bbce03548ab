"""Keeps freed host memory in the process's heap, so the tensors of the next engine step
reuse pages that are already mapped.

glibc serves large allocations (above a threshold that adapts up to 32 MiB) with fresh
`mmap`s and returns them to the OS on free, and trims the heap top when it grows past a
threshold. A CPU engine step allocates and frees tens of MiB of activations; with those
defaults every step faults all of their pages in again. Raising both thresholds leaves the
memory in the heap for reuse; the process's resident size then stays at its peak step's
working set, which a serving process holds anyway.

Huge pages: a decode step reads every weight and its sequences' whole K/V cache from DRAM,
hundreds of MiB in 4 KiB pages. With glibc's `glibc.malloc.hugetlb=1` tunable malloc marks
its memory for transparent huge pages (2 MiB), which the `bench` workload runs faster with.
Both measured in bench/README.md, "Numbers behind the engine's code comments". Tunables are
read when a process starts, so the engine cannot turn this on for itself: `make run` and
`make bench` start their processes with it, and an engine whose process lacks it says so
once per machine (huge_pages_hint).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from pathlib import Path

from serve_app.engine.model_path import cache_root

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


HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_page_mode() -> str | None:
    """The kernel's THP mode (`always`, `madvise` or `never`), None where it cannot be read."""
    try:
        text = THP_MODE_FILE.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def malloc_uses_huge_pages() -> bool:
    """True when this process's heap memory comes in transparent huge pages: the kernel gives
    them to every process (`always`), or to those that ask (`madvise`) and this one was
    started with the glibc tunable."""
    mode = transparent_huge_page_mode()
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return mode == "always" or (mode == "madvise" and HUGE_PAGE_TUNABLE in tunables)


# Under the cache root ($SERVE_APP_CACHE): the hint has been shown on this machine.
HINT_SHOWN_MARKER = Path("notes") / "huge-pages-hint-shown"


@functools.cache
def huge_pages_hint() -> str | None:
    """What to do where huge pages are available but unused, else None. Shown once per
    machine (per cache root): every engine command repeating it was noise, so later
    processes log it at DEBUG only."""
    if transparent_huge_page_mode() != "madvise" or malloc_uses_huge_pages():
        return None
    message = (
        "note (shown once): host memory comes in 4 KiB pages; start the engine's process "
        f"with GLIBC_TUNABLES={HUGE_PAGE_TUNABLE} for transparent huge pages "
        "(4-8% faster on the bench workload; README, 'CPU kernels')"
    )
    first = first_time_here(cache_root() / HINT_SHOWN_MARKER)
    logger.log(logging.WARNING if first else logging.DEBUG, message)
    return message


def first_time_here(marker: Path) -> bool:
    """True for the one process that creates `marker` (and where it cannot be written)."""
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.open("x").close()  # exclusive create: one process wins
    except FileExistsError:
        return False
    except OSError:
        return True
    return True
