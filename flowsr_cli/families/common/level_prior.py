"""The per-level latent module of the learned prior on a fixed-scale flow with several latent levels (SRFlow-LP,
HCFlow-LP; Tsao et al., CVPR 2024), the per-pixel standardisation of its initial latents, and the frozen flow
such a prior is trained on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.latent import DenseBlock, UNet

_Prior = TypeVar("_Prior", bound="FrozenFlowPrior")

STANDARDISE_EPS = 1e-6
"""Added to the per-pixel standard deviation (the original adds 1e-8 to an unbiased std)."""


def standardise(z: torch.Tensor, eps: float = STANDARDISE_EPS) -> torch.Tensor:
    """(B, C, H, W) -> zero mean and unit (population) standard deviation over the channels of every pixel."""
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True, unbiased=False)
    return (z - mean) / (std + eps)


class LevelPrior(nn.Module):
    """The latent module of one latent level: G(z_init, cond) -> z_hat, both (B, channels, H, W).

    As the LINF prior (:class:`~flowsr_cli.families.common.latent.LatentModule`): two dense-block encoders, one
    on the standardised initial latent and one on the flow's conditioning tensor of the level (the RRDB
    features at exactly that level's grid, so no resizing), concatenated into a UNet and a 1x1 head.

    The head starts at zero, so an untrained prior predicts z_hat = 0: the flow's temperature-0
    output, its most likely and PSNR-oriented image, in distribution by construction. Training starts
    from that faithful image instead of from a random latent (which could explode in the inverse).
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        branch_channels: int = 32,
        growth: int = 32,
        widths: Sequence[int] = (64, 128, 256, 256),
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths:
            raise TypeError("widths needs at least one level")
        self.latent_branch = DenseBlock(channels, growth, branch_channels)
        self.cond_branch = DenseBlock(cond_channels, growth, branch_channels)
        self.unet = UNet(2 * branch_channels, widths)
        self.head = nn.Conv2d(self.unet.out_channels, channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, z_init: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """z_hat from the standardised z_init and the level's condition (same H x W). The UNet input is
        zero-padded at the bottom/right to a multiple of its pooling factor and the output cropped back."""
        height, width = z_init.shape[-2:]
        joined = torch.cat([self.latent_branch(z_init), self.cond_branch(cond)], dim=1)
        multiple = self.unet.multiple
        joined = F.pad(joined, (0, -width % multiple, 0, -height % multiple))
        return self.head(self.unet(joined))[..., :height, :width]


class FrozenFlowPrior(nn.Module):
    """The base of a learned prior on a frozen flow (SRFlow-LP, HCFlow-LP): ``flow``'s parameters never require
    gradients and it stays in eval mode whatever :meth:`train` is asked; gradients still pass through its inverse
    into the priors. The flow runs in float32 outside autocast."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow
        self.flow.requires_grad_(False)
        self.flow.eval()

    def train(self: _Prior, mode: bool = True) -> _Prior:
        """Set the priors' mode; the frozen flow always stays in eval mode."""
        super().train(mode)
        self.flow.eval()
        return self

    def encode(self, lr: torch.Tensor) -> Any:
        """The flow's features of LR images (B, 3, h, w) in [0, 1], shared by every later step."""
        with torch.autocast(lr.device.type, enabled=False):
            return self.flow.encode(lr.float())
