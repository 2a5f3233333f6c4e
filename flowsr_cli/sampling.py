"""Latent noise that depends only on (seed, latent row), so any chunking or tiling draws the same."""

from __future__ import annotations

import torch

from flowsr_cli.models.linf import LatentSource

_MASK64 = (1 << 64) - 1


def row_seed(seed: int, row: int) -> int:
    """A well-mixed 63-bit seed for one latent row (splitmix64 of the pair)."""
    value = (seed * 0x9E3779B97F4A7C15 + row + 1) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (value ^ (value >> 31)) >> 1


def gaussian_latent(seed: int, temperature: float, batch: int, dim: int) -> LatentSource:
    """z = temperature * N(0, I), drawn on the CPU row by row of the latent grid; zeros when temperature is 0."""

    def latent(start: int, end: int, columns: int) -> torch.Tensor:
        if temperature == 0:
            return torch.zeros(batch, (end - start) * columns, dim)
        rows = [
            torch.randn(batch, columns, dim, generator=torch.Generator().manual_seed(row_seed(seed, row)))
            for row in range(start, end)
        ]
        return torch.cat(rows, dim=1).mul_(temperature)

    return latent
