"""How the process's C allocator (glibc) treats freed memory: process-wide choices, made by the command line
(never by the library: an application embedding recon keeps its own). No-ops off glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# mallopt parameters (glibc's malloc.h)
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return (
            libc
            if libc is not None and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim")
            else None
        )
    except OSError:
        return None


def reuse_freed_memory() -> bool:
    """One heap (arena) for every thread, blocks of 1 MiB and more in their own mappings.

    Each thread allocating gets its own arena by default, and the model threads, the flow threads and the
    consumer each held freed blocks the others could not reuse: new blocks came from fresh pages, which the
    kernel faults in and zeroes. Measured: 150 frames of the 640x192 drive, 825 k page faults and 1172 MB peak
    RSS with per-thread arenas, 505 k and 894 MB with one; 80 frames of the 640x480 room, 7.07 M and 5.52 M
    faults (bench_speed, room: 2.6 frames/s -> 4.2). Blocks of 1 MiB and more keep their own mappings: served
    from the heap they cut the faults little more and fragmented it. bench/bench_soak.py's peak-RSS ratio
    (1k -> 5k frames) came out 1.073 with one arena and 1.006 and 1.082 in two runs with per-thread arenas: it
    follows the timing of the windows in flight more than this setting. The heap's free pages go back to the OS
    once per window (`heap_trimmer`). Call before any thread starts (the arena limit binds threads created
    afterwards). Returns False where nothing was changed."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The heap grows 256 MiB of address space at a time (untouched pages cost nothing).
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 1 << 20), (_M_TOP_PAD, 256 << 20))
    return all([mallopt(param, value) == 1 for param, value in settings])  # noqa: C419 - a list: every setting is applied


def heap_trimmer() -> Callable[[], None]:
    """A function that hands the free pages of glibc's heap back to the OS (malloc_trim(0)); a no-op off glibc.

    Every window frees and allocates blocks: the place database swaps a keyframe's arrays for a new one's,
    the model, the joins and the map write allocate and free their temporaries. Freed blocks below a live
    one cannot be given back by the heap's own top-trimming and stay resident: at 320x96 (bench/bench_soak.py's
    drive) ~33 MB of RSS was free heap at any time, and it crept up as the long-lived blocks (place database,
    trajectory records) spread over the heap. Called once per window (10-50 ms, on the consumer thread while
    the model runs), RSS follows live memory."""
    libc = _glibc()
    if libc is None:
        return lambda: None
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def trim_free_pages() -> None:
        trim(0)

    return trim_free_pages
