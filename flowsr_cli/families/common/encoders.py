"""LR feature encoders (no upsampling): EDSR-baseline and the RRDB trunk of ESRGAN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from flowsr_cli.families.registry import Bound

WIDTH = Bound(1, 1024)
"""Channels and growth: the papers use 32 to 256."""
BLOCKS = Bound(0, 128)
"""Residual blocks: the papers use 16 to 32 (EDSR) and 23 (RRDB)."""


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResidualBlock(nn.Module):
    """conv-ReLU-conv with an identity skip (EDSR, residual scale 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv3x3(channels, channels), nn.ReLU(inplace=True), _conv3x3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EDSRBaseline(nn.Module):
    """EDSR-baseline without its upsampler: head conv, residual blocks, a body-end conv, a global skip.

    The paper's size is 64 channels x 16 blocks (~1.22 M parameters).
    """

    spec_bounds: ClassVar[Mapping[str, Bound]] = {"channels": WIDTH, "blocks": BLOCKS}

    def __init__(self, channels: int = 64, blocks: int = 16) -> None:
        super().__init__()
        self.out_channels = channels
        self.receptive_radius = 2 * blocks + 2
        self.head = nn.Sequential(_conv3x3(3, channels))
        self.body = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)), _conv3x3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, channels, h, w)."""
        head = self.head(x)
        return head + self.body(head)


class DenseBlock(nn.Module):
    """Five 3x3 convs, each seeing all earlier outputs; residual scaled by 0.2 (ESRGAN)."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(channels + index * growth, growth) for index in range(4))
        self.fuse = _conv3x3(channels + 4 * growth, channels)
        self.activation = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(self.activation(conv(torch.cat(features, dim=1))))
        return x + 0.2 * self.fuse(torch.cat(features, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual scaled by 0.2."""

    def __init__(self, channels: int, growth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(channels, growth) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)


class RRDBEncoder(nn.Module):
    """ESRGAN's RRDB trunk without its upsampler (paper: 23 blocks, 64 channels, growth 32, ~16.7 M)."""

    spec_bounds: ClassVar[Mapping[str, Bound]] = {"channels": WIDTH, "blocks": BLOCKS, "growth": WIDTH}

    def __init__(self, channels: int = 64, blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        self.out_channels = channels
        self.receptive_radius = 15 * blocks + 2
        self.conv_first = _conv3x3(3, channels)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(blocks)))
        self.conv_body = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, channels, h, w)."""
        first = self.conv_first(x)
        return first + self.conv_body(self.body(first))
