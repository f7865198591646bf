"""How the process's C allocator treats freed memory: a process-wide choice, made by the command line at
start-up (never by the library: an application embedding recon keeps its own)."""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def reuse_freed_memory() -> bool:
    """Keep freed blocks in one heap for the next allocation instead of returning them to the kernel.

    A window allocates the same large temporaries every time (point maps, flows, BA matrices: 1-30 MB each).
    By default glibc maps each of them fresh and unmaps it when freed, and the kernel zeroes every page on
    first touch again: 2.1 million page faults per 100 frames of a 640x192 drive, a quarter of the CPU time
    spent in the kernel. Each thread's own arena holds at most 64 MB, so the blocks of two windows in flight
    spill to fresh maps as well: one arena. Measured (300 frames, default run): 4.9 -> 5.6 frames/s end to
    end, peak resident memory about the same (910 -> 930 MB). Returns False where the C library is not
    glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: other C libraries' mallopt take other numbers
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Blocks up to 32 MiB (glibc's largest threshold) come from the heap, which grows 256 MiB of address space
    # at a time (untouched pages cost nothing) and gives its top back only above 1 GiB free.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 32 << 20), (_M_TOP_PAD, 256 << 20), (_M_TRIM_THRESHOLD, 1 << 30))
    return all([mallopt(param, value) == 1 for param, value in settings])
