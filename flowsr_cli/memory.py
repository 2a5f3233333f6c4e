"""How much memory a device has free, and the largest tile that fits in it."""

from __future__ import annotations

import math
import os

import torch

SAFETY_FACTOR = 0.5
"""Share of the free memory a tile may plan to use (the rest covers estimate error and other work)."""

MIN_TILE = 32
MAX_TILE = 512
"""Tiles larger than this bring no speed on CPUs or GPUs, only a larger peak."""


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
