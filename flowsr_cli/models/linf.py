"""LINF (Yao et al., CVPR 2023): local implicit normalizing flow for arbitrary-scale super-resolution.

An encoder turns the LR image into features; for each query (an HR pixel, or the centre of a p x p
HR patch) local Fourier features of the 4 nearest LR latents condition a small flow over the
residual ``HR - bilinear(LR)`` of that pixel or patch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flowsr_cli.models.coords import bilinear_base, cell_size, fold_patches, grid, patch_centres, unfold_patches
from flowsr_cli.models.linear_flow import ConditionalLinearFlow
from flowsr_cli.models.registry import make, register

LatentSource = Callable[[int, int, int], torch.Tensor]
"""(first latent row, end row, latent columns) -> latents (B, rows * columns, D) for that band."""

ProgressCallback = Callable[[float], None]

_NEIGHBOUR_OFFSETS = ((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0))
_SHIFT_EPS = 1e-6


@dataclass
class LRFeatures:
    """What LINF computes once per LR image and reuses for every query, in both directions."""

    lr: torch.Tensor
    """The LR image, (B, 3, h, w) in [-1, 1] (for the bilinear base)."""
    coef: torch.Tensor
    """Fourier amplitudes per LR pixel, (B, h*w, hidden), rows of the LR grid in row-major order."""
    freq: torch.Tensor
    """Fourier frequencies per LR pixel, (B, h*w, hidden)."""

    @property
    def height(self) -> int:
        """LR height."""
        return int(self.lr.shape[-2])

    @property
    def width(self) -> int:
        """LR width."""
        return int(self.lr.shape[-1])


@register("linf")
class LINF(nn.Module):
    """LINF with a pixel (``patch_size=1``, D=3) or patch (``patch_size=3``, D=27) flow.

    Sizes are spec arguments: the paper's EDSR-baseline-LINF is ``hidden=256, mlp_layers=3,
    flow_layers=10`` on a 64 x 16 EDSR-baseline encoder.
    """

    def __init__(
        self,
        encoder: dict[str, Any],
        patch_size: int = 3,
        hidden: int = 256,
        mlp_layers: int = 3,
        flow_layers: int = 10,
    ) -> None:
        super().__init__()
        if hidden % 2:
            raise TypeError("hidden must be even (frequencies are split into y and x halves)")
        self.encoder = make(encoder)
        self.patch_size = patch_size
        self.hidden = hidden
        features = self.encoder.out_channels
        self.coef = nn.Conv2d(features, hidden, 3, padding=1)
        self.freq = nn.Conv2d(features, hidden, 3, padding=1)
        self.phase = nn.Linear(2, hidden // 2, bias=False)
        self.flow = ConditionalLinearFlow(3 * patch_size * patch_size, flow_layers)
        widths = [4 * hidden] + [hidden] * mlp_layers
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], self.flow.condition_size))
        self.mlp = nn.Sequential(*layers)

    @property
    def dim(self) -> int:
        """Size of one flow vector: 3 (pixel model) or 27 (3x3 patch model)."""
        return self.flow.features

    def encode(self, lr: torch.Tensor) -> LRFeatures:
        """Features of an LR image (B, 3, h, w) in [-1, 1], computed once per image."""
        features = self.encoder(lr)
        return LRFeatures(
            lr=lr,
            coef=self.coef(features).flatten(2).transpose(1, 2),
            freq=self.freq(features).flatten(2).transpose(1, 2),
        )

    def condition(self, features: LRFeatures, points: torch.Tensor, cell: tuple[float, float]) -> torch.Tensor:
        """Flow conditioning for query points (B, N, 2) as (y, x) in [-1, 1]: (B, N, condition_size).

        The one feature-query function behind both directions (likelihood and sampling).
        """
        height, width = features.height, features.width
        relative_cell = points.new_tensor([cell[0] * height, cell[1] * width])
        phase = self.phase(relative_cell)
        half = self.hidden // 2
        terms: list[torch.Tensor] = []
        areas: list[torch.Tensor] = []
        for offset_y, offset_x in _NEIGHBOUR_OFFSETS:
            row = self._nearest_latent(points[..., 0], offset_y, height)
            column = self._nearest_latent(points[..., 1], offset_x, width)
            relative_y = (points[..., 0] - (-1.0 + (2 * row + 1) / height)) * height
            relative_x = (points[..., 1] - (-1.0 + (2 * column + 1) / width)) * width
            index = (row * width + column).unsqueeze(-1).expand(-1, -1, self.hidden)
            coef = torch.gather(features.coef, 1, index)
            freq = torch.gather(features.freq, 1, index)
            angle = math.pi * (
                freq[..., :half] * relative_y.unsqueeze(-1) + freq[..., half:] * relative_x.unsqueeze(-1) + phase
            )
            terms.append(coef * torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1))
            areas.append((relative_y * relative_x).abs() + 1e-9)
        total = torch.stack(areas).sum(dim=0)
        weighted = [term * (areas[3 - index] / total).unsqueeze(-1) for index, term in enumerate(terms)]
        return self.mlp(torch.cat(weighted, dim=-1))

    @staticmethod
    def _nearest_latent(coordinate: torch.Tensor, offset: float, size: int) -> torch.Tensor:
        shifted = (coordinate + offset / size + _SHIFT_EPS).clamp(-1 + 1e-6, 1 - 1e-6)
        return ((shifted + 1) * (size / 2)).floor().long().clamp(0, size - 1)

    def log_prob(self, residual: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact log-likelihood (nats) of residual vectors (M, D) given their conditioning; and their latents z."""
        z, log_p = self.flow(residual, condition)
        return log_p, z

    def sample(self, condition: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Residual vectors (M, D) for latents ``z`` (M, D) under their conditioning."""
        return self.flow.inverse(z, condition)

    def nll(
        self, lr: torch.Tensor, hr: torch.Tensor, queries: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean negative log-likelihood in nats per query of HR crops (B, 3, H, W) given their LR, both in
        [-1, 1]; H and W must be multiples of the patch size. ``queries`` samples that many patches."""
        height, width = hr.shape[-2:]
        patch = self.patch_size
        if height % patch or width % patch:
            raise ValueError(f"HR size {height}x{width} is not a multiple of the patch size {patch}")
        features = self.encode(lr)
        base = bilinear_base(lr, patch_centres(height, 1, lr.device), patch_centres(width, 1, lr.device))
        residual = unfold_patches(hr - base, patch)
        points = grid(patch_centres(height, patch, lr.device), patch_centres(width, patch, lr.device))
        if queries is not None and queries < points.shape[0]:
            chosen = torch.randperm(points.shape[0], generator=generator)[:queries].to(lr.device)
            residual, points = residual[:, chosen], points[chosen]
        condition = self.condition(features, points.expand(hr.shape[0], -1, -1), cell_size(height, width))
        log_p, _ = self.log_prob(residual.flatten(0, 1), condition.flatten(0, 1))
        return -log_p.mean()

    def render(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        latent: LatentSource,
        chunk_queries: int = 16384,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """The HR image (B, 3, H, W) in [-1, 1] for latents from ``latent``, in bands of whole latent rows
        of at most ``chunk_queries`` queries (bounded memory, the same result for any chunk size)."""
        height, width = size
        patch = self.patch_size
        device, dtype = features.lr.device, features.lr.dtype
        rows, columns = patch_centres(height, patch, device), patch_centres(width, patch, device)
        batch = features.lr.shape[0]
        cell = cell_size(height, width)
        band = max(1, chunk_queries // len(columns))
        canvas = torch.empty(batch, 3, len(rows) * patch, len(columns) * patch, device=device, dtype=dtype)
        for start in range(0, len(rows), band):
            end = min(len(rows), start + band)
            points = grid(rows[start:end], columns).expand(batch, -1, -1)
            condition = self.condition(features, points, cell)
            z = latent(start, end, len(columns)).to(device=device, dtype=dtype)
            residual = self.sample(condition.flatten(0, 1), z.flatten(0, 1)).view(batch, -1, self.dim)
            canvas[:, :, start * patch : end * patch] = fold_patches(residual, end - start, len(columns), patch)
            if progress is not None:
                progress(end / len(rows))
        base = bilinear_base(features.lr, patch_centres(height, 1, device), patch_centres(width, 1, device))
        return canvas[..., :height, :width] + base
