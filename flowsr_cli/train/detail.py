"""The detail-energy term of the learned prior's loss: how much detail the output restores, where.

A perceptual loss on aligned features rewards a deterministic prior for restoring only the detail it can
place exactly, so its latents shrink towards the flow's mode and the output turns smooth. This term asks
instead that every window's detail (the image minus the flow's bilinear base) carry as much energy as
the target's, whatever its layout.
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
