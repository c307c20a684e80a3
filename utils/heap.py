"""Keeping a DataLoader worker's freed memory for its next sample: glibc's trim and mmap thresholds raised.

A training sample makes and frees a few large uint8 arrays (a Mosaic canvas of 2H x 2W, 4.9 MB at 640 and 3
channels; the 640x640 warp, flip and item images). glibc's malloc serves an array over its mmap threshold by a fresh
mmap and gives the heap's free top back to the OS once it exceeds its trim threshold; both thresholds adapt (the trim
threshold becomes twice the largest mmapped block freed so far, ~10 MB here). So the next sample's arrays fault their
pages in again, zeroed by the kernel, about 0.25 ms per MB. A fused sample (RGB + event planes) has twice these
arrays alive at once and crossed the trim threshold every sample: on a 2-core CPU 5-6 ms of its 8-9 ms with Mosaic
were page faults (event-only samples 0.2 ms). With the thresholds fixed above a sample's working set, freed memory
stays in the heap and the next sample reuses it: each worker keeps up to TRIM_THRESHOLD of freed memory (its peak
working set, tens of MB), and arrays larger than MMAP_THRESHOLD are still mapped and unmapped as before.
"""
import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h> mallopt() parameters
TRIM_THRESHOLD = 64 << 20  # bytes of free heap top kept rather than returned to the OS
MMAP_THRESHOLD = 32 << 20  # bytes: larger allocations are mmapped (glibc's largest allowed value on 64-bit)


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Fix this process's glibc trim and mmap thresholds at TRIM_THRESHOLD and MMAP_THRESHOLD (once); returns
    whether they were set (False off glibc, e.g. macOS or musl: nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
