"""The detail-energy term of the learned prior's loss: how much detail the output restores, where.

A perceptual loss on aligned features rewards a deterministic prior for restoring only the detail it can
place exactly, so its latents shrink towards the flow's mode and the output turns smooth. This term asks
instead that every window's detail (the image minus the flow's bilinear base) carry as much energy as
the target's, whatever its layout.

The grid term checks one layout: the part of the detail that repeats with the flow's patch grid. Patch
latents make such a pattern the cheapest way to add detail energy, so a prior trained for energy alone
learns to print a faint p-pixel pattern over flat areas; photos have little of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DETAIL_WINDOW = 8
"""Side in output pixels of the windows whose detail energy is compared."""


def detail_rms(detail: torch.Tensor, window: int = DETAIL_WINDOW) -> torch.Tensor:
    """The root-mean-square (B, 1, H // window, W // window) of ``detail`` (B, C, H, W) over each
    window's pixels and channels (a partial last row or column of windows is dropped)."""
    energy = F.avg_pool2d(detail.float().pow(2).mean(dim=1, keepdim=True), window)
    return (energy + 1e-8).sqrt()


def detail_loss(output: torch.Tensor, target: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the windowed detail RMS of ``output`` and ``target`` (B, C, H, W),
    the detail being each image minus ``base``."""
    return (detail_rms(output - base) - detail_rms(target - base)).abs().mean()


GRID_WINDOW = 8
"""Side in patches of the windows whose patch-periodic pattern is compared."""


def grid_rms(detail: torch.Tensor, patch: int, window: int = GRID_WINDOW) -> torch.Tensor:
    """The RMS (B, 1, h, w) of the patch-periodic pattern of ``detail`` (B, C, H, W; H and W multiples of
    ``patch``) in each window of ``window`` x ``window`` patches (fewer if the image is smaller): the
    mean p x p block of the window's patches, less that block's own mean, over its pixels and channels.
    The detail is first high-passed by subtracting its p x p box average, which removes local ramps
    (they would otherwise look like a pattern) and keeps every zero-mean pattern of period p."""
    batch, channels, height, width = detail.shape
    if height % patch or width % patch:
        raise ValueError(f"detail size {height}x{width} is not a multiple of the patch size {patch}")
    rows, columns = height // patch, width // patch
    low, high = patch // 2, (patch - 1) // 2
    detail = detail.float()
    detail = detail - F.avg_pool2d(F.pad(detail, (low, high, low, high), mode="replicate"), patch, stride=1)
    phases = detail.view(batch, channels, rows, patch, columns, patch).permute(0, 1, 3, 5, 2, 4)
    phases = phases.reshape(batch, channels * patch * patch, rows, columns)
    block = F.avg_pool2d(phases, (min(window, rows), min(window, columns)))
    block = block.view(batch, channels, patch * patch, *block.shape[-2:])
    pattern = block - block.mean(dim=2, keepdim=True)
    return (pattern.pow(2).mean(dim=(1, 2)).unsqueeze(1) + 1e-8).sqrt()


def grid_loss(output: torch.Tensor, target: torch.Tensor, base: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean absolute difference of the windowed patch-periodic pattern RMS of ``output`` and ``target``,
    the detail being each image minus ``base``."""
    return (grid_rms(output - base, patch) - grid_rms(target - base, patch)).abs().mean()
