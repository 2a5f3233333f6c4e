"""The shared coordinate system of arbitrary-scale SR: pixel centres on [-1, 1], cells, patch grids.

For n pixels the centres are ``c_i = -1 + (2i + 1) / n``; a p x p patch grid over n pixels has
``ceil(n / p)`` patches whose centres are ``-1 + p (2k + 1) / n``. When n is not a multiple of p the
last patch reaches past the image: its centre is extrapolated on the same grid (the upstream code
gave it coordinate 0, the image centre, which broke the border of such images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def patch_centres(length: int, patch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Centre coordinates of the ``ceil(length / patch)`` patches along one axis of ``length`` pixels."""
    count = math.ceil(length / patch)
    index = torch.arange(count, dtype=torch.float32, device=device)
    return -1.0 + patch * (2.0 * index + 1.0) / length


def grid(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """All (y, x) pairs of two coordinate vectors, row-major: (len(rows) * len(columns), 2)."""
    ys, xs = torch.meshgrid(rows, columns, indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1)


def cell_size(height: int, width: int) -> tuple[float, float]:
    """The size (y, x) of one output pixel in [-1, 1] units."""
    return 2.0 / height, 2.0 / width


def bilinear_base(lr: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``lr`` (B, C, h, w) at the grid of pixel centres ``rows x columns``, with
    border clamping: equal to bilinear upsampling, but usable for any window of the output."""
    ys, xs = torch.meshgrid(rows.to(lr.dtype), columns.to(lr.dtype), indexing="ij")
    sample_points = torch.stack([xs, ys], dim=-1).unsqueeze(0).expand(lr.shape[0], -1, -1, -1)  # (x, y) order
    return F.grid_sample(lr, sample_points, mode="bilinear", padding_mode="border", align_corners=False)


def unfold_patches(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of ``patch`` -> (B, (H/p)(W/p), C p p) patch vectors, row-major."""
    batch, channels, height, width = image.shape
    patches = image.view(batch, channels, height // patch, patch, width // patch, patch)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch * patch)


def fold_patches(vectors: torch.Tensor, rows: int, columns: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`unfold_patches`: (B, rows*columns, C p p) -> (B, C, rows p, columns p)."""
    batch = vectors.shape[0]
    channels = vectors.shape[-1] // (patch * patch)
    patches = vectors.view(batch, rows, columns, channels, patch, patch)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, rows * patch, columns * patch)


def to_window(coordinates: torch.Tensor, full: int, origin: int, length: int) -> torch.Tensor:
    """Coordinates on the [-1, 1] grid of ``full`` pixels as coordinates on the [-1, 1] grid of a window of
    ``length`` of those pixels starting at pixel ``origin``."""
    pixels = ((coordinates + 1) * full - 1) / 2 - origin
    return (2 * pixels + 1) / length - 1
