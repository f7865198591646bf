"""How the process's C allocator (glibc) treats freed memory: process-wide choices, made by the command line
(never by the library: an application embedding recon keeps its own). No-ops off glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc's malloc.h)


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_large_blocks_to_the_os() -> bool:
    """Blocks of 1 MiB and more get their own mappings, handed back to the OS on free.

    Each window allocates and frees large temporaries (the 1M-voxel merge, the map.ply buffer, point maps,
    flows). Served from the heap, they fragment it and peak RSS creeps up with the stream while live memory
    stays flat. Measured with bench/bench_soak.py (peak RSS at 1k -> 5k frames, 320x96 drive): these
    settings 705 -> 709 MB (+0.6%); blocks up to 32 MiB from the heap, +6.5%; one arena for every thread
    (505 k page faults per 150 drive frames instead of 825 k, 894 MB peak instead of 1172), 651 -> 699 MB,
    +7.3%, past the 5% allowed. The heap's free pages go back to the OS once per window (`heap_trimmer`).
    Returns False where nothing was changed."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 20) == 1)


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
