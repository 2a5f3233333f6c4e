"""Keep freed memory for reuse instead of handing it back to the OS and faulting it in again.

glibc's malloc serves blocks of more than 32 MiB (and, until one is freed, more than 128 KiB) with a fresh
``mmap`` and unmaps them on ``free``; every page of the next such block is then faulted in and zeroed by the
kernel. An upscale allocates and frees tensors of that size many times per image (latent grids, full-size planes,
the consistency stage's bands), and on this machine's CPU a page fault costs about 1.5 us: at 512^2 x4 a tenth of
the wall time. Raising the mmap and trim thresholds lets those blocks come back from the heap.

A heap that keeps freed blocks fragments when the next stage asks for blocks of other sizes (at 2048^2 x4 the
peak rose from 2.7 to 3.1-3.7 GB), so :func:`return_freed_memory` hands the free pages back between stages: the
consistency stage calls it when a tile reaches it and after each band it emits. What remains is the reuse within
a stage (a tile's bands of queries, a fixed-x4 flow's layers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

REUSED_BLOCK_BYTES = 256 << 20
"""Blocks up to this size come from (and return to) the heap; larger ones are still mapped and unmapped (the
learned prior's conditioning grid, the largest, is kept by its engine instead: ``LearnedPriorUpscaler._grid_space``)."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")
_libc: ctypes.CDLL | None = None
"""glibc, once its thresholds are set."""


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to :data:`REUSED_BLOCK_BYTES` for this process, once; whether they
    are set. Does nothing off Linux, without glibc, or where the user set malloc's thresholds or preloaded
    another allocator (their choice stands)."""
    global _libc
    if _libc is not None:
        return True
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, libc.malloc_trim.argtypes = libc.mallopt, (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if all(mallopt(option, REUSED_BLOCK_BYTES) for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)):
        _libc = libc
    return _libc is not None


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``), where :func:`reuse_freed_memory` made
    it keep them: call it between stages whose blocks differ in size (a tile handed on to the consistency stage),
    so that the heap does not grow around the holes the last stage left."""
    if _libc is not None:
        _libc.malloc_trim(0)
