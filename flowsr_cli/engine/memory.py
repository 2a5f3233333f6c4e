"""How much memory a device has free, and the largest tile that fits in it."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TypeVar

import torch

from flowsr_cli.errors import FlowsrError

Result = TypeVar("Result")

SAFETY_FACTOR = 0.5
"""Share of the free memory a tile may plan to use (the rest covers estimate error and other work)."""

MIN_TILE = 32
MAX_TILE = 512
"""Tiles larger than this bring no speed on CPUs or GPUs, only a larger peak."""

MAX_WINDOW_BYTES = 2 << 30
"""The most memory one tile's window (its core and the context around it) may plan to use, whatever
is free: with the bundled LINF-LP a 516-pixel window at x4, 705 at x2, 305 at x8."""


CPU_QUERIES_PER_THREAD = 2048
"""On a CPU, LINF's per-query tensors of a band (queries x 128 floats) stay in the cores' caches up to
about this many queries per thread: the conditioning ran 1.8x faster than with 16384 in one thread."""
GPU_QUERY_CHUNK = 16384


def query_chunk(device: torch.device) -> int:
    """How many queries LINF handles at once on ``device``: a speed setting (results move only by
    float rounding, below 1e-4)."""
    return CPU_QUERIES_PER_THREAD * torch.get_num_threads() if device.type == "cpu" else GPU_QUERY_CHUNK


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the RAM the OS reports as available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_tile(free_bytes: int, bytes_per_input_pixel: float, halo: int) -> int:
    """The largest tile side (input pixels, between MIN_TILE and MAX_TILE) whose read area
    ``(tile + 2 halo)^2`` costs at most ``SAFETY_FACTOR`` of the free memory."""
    budget = free_bytes * SAFETY_FACTOR
    side = math.floor(math.sqrt(max(budget, 0) / bytes_per_input_pixel)) - 2 * halo
    return max(MIN_TILE, min(MAX_TILE, side))


def choose_window(free_bytes: int, bytes_per_input_pixel: float, reserved: int = 0) -> int:
    """The largest window side (input pixels, at least MIN_TILE) whose area costs at most
    ``SAFETY_FACTOR`` of the free memory and at most MAX_WINDOW_BYTES, less ``reserved`` bytes the
    caller holds anyway (at most half the budget, so huge outputs still get workable tiles). An image
    that fits is done whole; otherwise each tile's core is this window less its context, so a larger
    window wastes less on context: only memory bounds it."""
    budget = min(free_bytes * SAFETY_FACTOR, MAX_WINDOW_BYTES)
    budget -= min(reserved, budget / 2)
    return max(MIN_TILE, math.floor(math.sqrt(max(budget, 0) / bytes_per_input_pixel)))


def halve_tile_on_oom(
    attempt: Callable[[int], Result], tile: int, longest_side: int, notes: list[str], already_reduced: bool
) -> tuple[Result, int | None]:
    """``attempt(tile)``, halving the tile after each CUDA out-of-memory error (noted once, unless
    ``already_reduced``). Returns the result and the smaller tile it ended with (None if it never shrank)."""
    reduced = None
    while True:
        try:
            return attempt(tile), reduced
        except torch.cuda.OutOfMemoryError:
            smaller = (tile if tile > 0 else longest_side) // 2
            if smaller < MIN_TILE:
                raise FlowsrError(f"out of GPU memory even with {MIN_TILE}-pixel tiles; try --device cpu") from None
            torch.cuda.empty_cache()
            if reduced is None and not already_reduced:
                notes.append(f"GPU out of memory: continuing with {smaller}-pixel tiles")
            reduced = tile = smaller
