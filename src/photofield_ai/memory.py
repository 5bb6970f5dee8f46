"""Allocator and garbage-collector settings for a long-running server that allocates many
large, short-lived arrays from several threads (decoded images, batches, model outputs) and many
small objects per request (tasks, futures, dicts).

glibc malloc. With its defaults each thread gets its own arena (up to 8 per core) and the mmap
threshold floats up after the first large free, so big arrays end up scattered over the heaps:
measured here, RSS kept creeping up by about 8 % over a 30-minute soak with no Python-level
growth (tracemalloc). Two arenas bound that, and the threshold is fixed instead of floating —
at 256 kB, not glibc's 128 kB. At 128 kB a thumbnail request's own arrays (the decoded
256×192 image 147 kB, its resize 200 kB, the 224² uint8 model input 150 kB) were each an mmap, a
page fault per 4 kB touched and an munmap, which on a VM costs a TLB shootdown across the
process's threads; now they are reused from the heap. The heap also keeps up to 8 MB free at
its top (trim threshold) and grows 2 MB at a time (top pad) instead of handing memory back and
faulting it in again on the next request. Larger blocks (a float32 model input, a batch, a
photo's decode) are mapped and unmapped as before unless the heap has the room at hand, which
keeps them from fragmenting it. Measured on the 2-core VM with this and the GC setting below,
simulated accelerator, thumbnails at C=64, alternating rounds: 2.93 → 2.42 ms of server CPU per
request (BENCHMARKS.md). A 1 MB threshold was no faster and grew RSS 6.5 % over the soak; a
spare 32 MB grown 8 MB at a time was no faster and held 50-80 MB more.

CPython's cyclic GC collects its first generation every 700 net allocations of container objects
and the older ones every 10 of those. A request makes hundreds (coroutines, futures, header
lists, response dicts). Counted at C=64 with thumbnails: 449 collections took 0.56 s over
~5,200 requests (0.11 ms per request); with a first generation of 10,000, 109 took 0.08 s
(0.015 ms). What waits longer is only garbage in reference cycles, which a request makes
little of.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameters and their environment-variable spellings (an explicit variable wins).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MALLOC_SETTINGS = (
    (M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 256 * 1024),
    (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 8 * 1024 * 1024),
    (M_TOP_PAD, "MALLOC_TOP_PAD_", 2 * 1024 * 1024),
    (M_ARENA_MAX, "MALLOC_ARENA_MAX", 2),
)
# gc.set_threshold: first generation, then how many collections of each before the next one up.
GC_THRESHOLDS = (10_000, 20, 20)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def tune_malloc() -> bool:
    """Apply MALLOC_SETTINGS on glibc (Linux); elsewhere do nothing. Explicit MALLOC_*
    environment variables win, each on its own. Returns whether anything was set."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = False
    for param, variable, value in MALLOC_SETTINGS:
        if variable not in os.environ:
            done |= mallopt(param, value) == 1
    return done


def tune_gc() -> None:
    """Collect the first generation every GC_THRESHOLDS[0] allocations instead of 700."""
    gc.set_threshold(*GC_THRESHOLDS)


def tune_process() -> bool:
    """What every server process does first, before it starts a thread. Returns whether any
    malloc setting was applied."""
    tune_gc()
    return tune_malloc()


def trim_malloc() -> bool:
    """Hand freed heap memory back to the OS now (glibc's malloc_trim), as after a model was
    unloaded. True if glibc released anything."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
