"""Latent noise that depends only on (seed, latent row), so any chunking or tiling draws the same."""

from __future__ import annotations

from collections.abc import Callable

import torch

LatentSource = Callable[[range, range], torch.Tensor]
"""(latent rows, latent columns) -> latents (B, D, len(rows) * len(columns)): one column per latent cell, cells
row-major (the layout the flow's inference reads)."""

_MASK64 = (1 << 64) - 1


def row_seed(seed: int, row: int) -> int:
    """A well-mixed 63-bit seed for one latent row (splitmix64 of the pair)."""
    value = (seed * 0x9E3779B97F4A7C15 + row + 1) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (value ^ (value >> 31)) >> 1


def gaussian_latent(seed: int, temperature: float, batch: int, dim: int, width: int) -> LatentSource:
    """z = temperature * N(0, I) for a latent grid ``width`` columns wide, drawn on the CPU row by row
    (each row from its own seed), so any window of the grid gets the same values; zeros at temperature 0."""

    def latent(rows: range, columns: range) -> torch.Tensor:
        if temperature == 0:
            return torch.zeros(batch, dim, len(rows) * len(columns))
        bands = [
            torch.randn(batch, width, dim, generator=torch.Generator().manual_seed(row_seed(seed, row)))[
                :, columns.start : columns.stop
            ]
            for row in rows
        ]
        return torch.cat(bands, dim=1).mul_(temperature).mT

    return latent
