"""Removing a patch model's grid: the part of an image that repeats with the model's patches, locally.

A flow with p x p patch latents (LINF) can print a faint pattern that repeats every p pixels over flat
areas. The image is first high-passed (less its p x p box average, which removes local ramps: a ramp
would otherwise look like a pattern and turn into steps); then each of the p x p phases of the patch grid
(pixels ``(i, j)`` with the same ``(i mod p, j mod p)``) is averaged over a window of ``2 * window + 1``
patches each way; those averages less their mean over the phases are the local periodic pattern, which
is subtracted from the image. This is a linear, local filter: it removes only what repeats exactly with
the patch period in the neighbourhood (a notch at the grid's frequencies) and keeps everything else. Rows
and columns 0 are on the patch grid (the models' patches start there); a band of rows that starts on the
grid is filtered like the whole image, except within :func:`degrid_reach` rows of a cut edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRID_WINDOW = 4
"""Patches on each side of a patch over which its periodic pattern is averaged (9 x 9 patches, 27 pixels
for LINF's 3 x 3): chosen on training photos, where 8 (17 x 17) left twice as much grid above the photos'
level for the same LPIPS (docs/quality.md)."""


def degrid_reach(period: int, window: int = GRID_WINDOW) -> int:
    """Rows next to a cut edge of a band whose filtered values may differ from filtering the whole image."""
    return (window + 2) * period


def _mean_along(image: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """The mean over ``before + 1 + after`` neighbours along ``dim`` (-2 or -1), borders replicated: a sum
    of shifted slices (the same additions in the same order wherever a band starts)."""
    size, length = before + 1 + after, image.shape[dim]
    padded = F.pad(image, (0, 0, before, after) if dim == -2 else (before, after, 0, 0), mode="replicate")
    total = padded.narrow(dim, 0, length) + padded.narrow(dim, 1, length)
    for shift in range(2, size):
        total.add_(padded.narrow(dim, shift, length))
    return total.div_(size)


def _box(image: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """The mean over each ``(before + 1 + after)``-square around every pixel, borders replicated."""
    return _mean_along(_mean_along(image, -2, before, after), -1, before, after)


def remove_grid(image: torch.Tensor, period: int, window: int = GRID_WINDOW) -> torch.Tensor:
    """``image`` (B, C, H, W) less its local pattern of period ``period`` (borders replicated)."""
    height, width = image.shape[-2:]
    pattern = _local_pattern(_high_pass(image, period), period, window)
    return image - pattern[..., :height, :width]


def _high_pass(image: torch.Tensor, period: int) -> torch.Tensor:
    """``image`` less its ``period``-square box mean, padded (borders replicated) to multiples of ``period``."""
    height, width = image.shape[-2:]
    high = image - _box(image, period // 2, (period - 1) // 2)
    return F.pad(high, (0, -width % period, 0, -height % period), mode="replicate")


def _local_pattern(padded: torch.Tensor, period: int, window: int) -> torch.Tensor:
    """The local periodic pattern of a high-passed image whose sides are multiples of ``period``. Each
    intermediate image-sized tensor is released as soon as the next exists (a band of an 8192-pixel-wide
    output is about 140 MB in float32)."""
    batch, channels, rows, columns = padded.shape
    phases = padded.view(batch, channels, rows // period, period, columns // period, period)
    del padded
    phases = phases.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels * period * period, rows // period, -1)
    local = _box(phases, window, window)
    del phases
    local = local.view(batch, channels, period * period, *local.shape[-2:])
    pattern = local - local.mean(dim=2, keepdim=True)
    del local
    pattern = pattern.view(batch, channels, period, period, rows // period, columns // period)
    return pattern.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, rows, columns)
