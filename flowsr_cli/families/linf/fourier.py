"""LINF's local Fourier features: each query's 4 nearest latents' amplitudes times the cosines and sines of
their frequencies at the query, weighted by the area opposite.

Two forms of the same arithmetic, in the same order: :func:`fourier_terms` builds its result from whole
tensors (differentiable, for training, and what ``torch.compile`` fuses into one loop when asked, see
:meth:`LINF.use_compiled`); :func:`fourier_terms_into` writes each neighbour's block of a preallocated input in
place (no concatenations: the fastest eager form, for inference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Kernel = Callable[..., torch.Tensor]
"""A function of tensors to a tensor, such as :func:`fourier_terms`, or a compiled version of one."""


@dataclass(frozen=True)
class Neighbours:
    """Where the queries (B, N) read a Fourier table (B, M, 2 * hidden), each field (4, B, N), one entry per
    neighbour (LR offsets (-1, -1), (-1, 1), (1, -1), (1, 1) in that order): the table row, the query's offset
    from that latent in LR pixels (y, x), and the weight (area opposite / total)."""

    index: torch.Tensor
    relative_y: torch.Tensor
    relative_x: torch.Tensor
    weight: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fields in the order :func:`fourier_terms` takes them."""
        return self.index, self.relative_y, self.relative_x, self.weight


def fourier_terms(
    table: torch.Tensor,
    phase: torch.Tensor,
    index: torch.Tensor,
    relative_y: torch.Tensor,
    relative_x: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """The MLP's input (B, N, 4 * hidden) from a table (B, M, 2 * hidden) of amplitudes then frequencies
    (y half, x half), the phase (hidden / 2,) and a :class:`Neighbours`' tensors; differentiable."""
    terms = []
    for neighbour in range(index.shape[0]):
        coef, freq_y, freq_x = _amplitudes_and_frequencies(table, index[neighbour])
        angle = phase + freq_y * relative_y[neighbour].unsqueeze(-1)
        angle = (angle + freq_x * relative_x[neighbour].unsqueeze(-1)) * math.pi
        waves = torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)
        terms.append(waves * coef * weight[neighbour].unsqueeze(-1))
    return torch.cat(terms, dim=-1)


def fourier_terms_into(
    out: torch.Tensor,
    table: torch.Tensor,
    phase: torch.Tensor,
    index: torch.Tensor,
    relative_y: torch.Tensor,
    relative_x: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """:func:`fourier_terms` written into ``out`` (B, N, 4 * hidden) in place; not differentiable."""
    width = table.shape[-1] // 2
    half = width // 2
    for neighbour in range(index.shape[0]):
        coef, freq_y, freq_x = _amplitudes_and_frequencies(table, index[neighbour])
        angle = torch.addcmul(phase, freq_y, relative_y[neighbour].unsqueeze(-1))
        angle = angle.addcmul_(freq_x, relative_x[neighbour].unsqueeze(-1)).mul_(math.pi)
        term = out[..., neighbour * width : (neighbour + 1) * width]
        torch.cos(angle, out=term[..., :half])
        torch.sin(angle, out=term[..., half:])
        term.mul_(coef).mul_(weight[neighbour].unsqueeze(-1))
    return out


def _amplitudes_and_frequencies(
    table: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The table rows that indices (B, N) name, split as the table is laid out: amplitudes (B, N, hidden), then
    y and x frequencies (B, N, hidden / 2 each)."""
    width = table.shape[-1] // 2
    rows = rows_at(table, index)
    return rows[..., :width], rows[..., width : width + width // 2], rows[..., width + width // 2 :]


def rows_at(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[b, index[b, n]]`` for a table (B, M, C) and indices (B, N): whole rows copied at once
    (faster than ``torch.gather`` with an index expanded over C)."""
    batch, length, channels = table.shape
    offsets = torch.arange(batch, device=index.device).unsqueeze(-1) * length
    return table.reshape(-1, channels).index_select(0, (index + offsets).flatten()).view(batch, -1, channels)
