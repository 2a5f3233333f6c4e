"""Keep freed memory for reuse instead of handing it back to the OS and faulting it in again.

glibc's malloc serves blocks of more than 32 MiB (and, until one is freed, more than 128 KiB) with a fresh
``mmap`` and unmaps them on ``free``; every page of the next such block is then faulted in and zeroed by the
kernel. An upscale allocates and frees tensors of that size hundreds of times per image (a band's Fourier
features, a full-size output plane, the consistency stage's images), so on the CPU about a quarter of its wall
time went to page faults. Raising the mmap and trim thresholds lets those blocks come back from the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

REUSED_BLOCK_BYTES = 256 << 20
"""Blocks up to this size come from (and return to) the heap; larger ones, such as a tile's conditioning grid,
are still mapped and unmapped, so the heap keeps at most about this much freed memory."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")
_tuned = False


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to :data:`REUSED_BLOCK_BYTES` for this process, once; whether they
    are set. Does nothing off Linux, without glibc, or where the user set malloc's thresholds or preloaded
    another allocator (their choice stands)."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _tuned = all(mallopt(option, REUSED_BLOCK_BYTES) for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
    return _tuned
