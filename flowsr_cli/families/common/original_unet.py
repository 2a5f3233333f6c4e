"""The FlowSR-LP code's own UNet (after milesial/Pytorch-UNet), for imported original checkpoints.

Modules carry the original's names (``inc``, ``down_layers.i.maxpool_conv.1``, ``up_layers.i.conv``,
``outc.conv``, dense blocks' ``conv1..conv5``), so its state dicts load as they are. Unlike flowsr's
:class:`~flowsr_cli.families.common.latent.UNet` it does not pad its input: pooling floors odd sizes, and
each upsampling is bilinear with ``align_corners=True`` (its sample positions depend on the whole map's
size) and then zero-padded at the bottom/right to its skip's size.

To run on a window of a larger map and give there what the whole map would, each step is told where the
window lies in the whole map (:class:`MapWindow`): convolutions and pooling are local, so only the
upsampling needs it. A window must start on a multiple of ``2 ** depth``; values within the UNet's reach
of a window edge that is not the map's edge are wrong and must be cropped off by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.latent import DoubleConv
from flowsr_cli.families.common.layout import in_autocast_dtype, lerp_along

DENSE_CONVS = 5


@dataclass(frozen=True)
class MapWindow:
    """Where a window of a level-0 map lies: its top-left cell ``origin`` and the whole map's ``full`` size."""

    origin: tuple[int, int]
    full: tuple[int, int]

    @staticmethod
    def whole(size: tuple[int, int]) -> MapWindow:
        """The window that is the whole map."""
        return MapWindow((0, 0), size)

    def level(self, level: int) -> MapWindow:
        """The same window ``level`` poolings down (sizes floored as max-pooling does)."""
        factor = 2**level
        full = self.full
        for _ in range(level):
            full = (full[0] // 2, full[1] // 2)
        return MapWindow((self.origin[0] // factor, self.origin[1] // factor), full)


class DenseBlock5C(nn.Module):
    """The original ``DenseBlock_5C``: five 3x3 convs with biases, each reading the input and all earlier
    outputs, LeakyReLU 0.2 after the first four."""

    def __init__(self, in_channels: int, growth: int, out_channels: int) -> None:
        super().__init__()
        for index in range(1, DENSE_CONVS + 1):
            width_out = out_channels if index == DENSE_CONVS else growth
            setattr(self, f"conv{index}", nn.Conv2d(in_channels + (index - 1) * growth, width_out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h, w)."""
        features = [in_autocast_dtype(x)]
        for index in range(1, DENSE_CONVS):
            conv = getattr(self, f"conv{index}")
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), 0.2))
        return getattr(self, f"conv{DENSE_CONVS}")(torch.cat(features, dim=1))


class OriginalDoubleConv(nn.Module):
    """The original ``DoubleConv`` (its layers under ``double_conv``); BatchNorm folds in at inference."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        self.double_conv = DoubleConv(in_channels, out_channels, mid_channels or out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h, w)."""
        return self.double_conv(x)


class Down(nn.Module):
    """Max-pool 2 (flooring odd sizes), then a double conv; the pool is ``maxpool_conv.0``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), OriginalDoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h // 2, w // 2)."""
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Bilinear x2 (``align_corners=True``), zero-padded to the skip's size, joined after the skip, then a
    double conv whose middle width is half its input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = OriginalDoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(
        self, coarse: torch.Tensor, skip: torch.Tensor, coarse_at: MapWindow, skip_at: MapWindow
    ) -> torch.Tensor:
        """The level's output for ``skip`` (a window ``skip_at``) and the coarser level's ``coarse`` (``coarse_at``)."""
        upsampled = coarse
        for axis in (0, 1):
            upsampled = _upsample_axis(
                upsampled,
                axis,
                coarse_at.origin[axis],
                coarse_at.full[axis],
                skip_at.origin[axis],
                skip.shape[2 + axis],
            )
        return self.conv(torch.cat([skip, upsampled], dim=1))


class OutConv(nn.Module):
    """The original 1x1 output conv (``outc.conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h, w)."""
        return self.conv(x)


def _upsample_axis(
    x: torch.Tensor, axis: int, origin: int, full: int, out_origin: int, out_length: int
) -> torch.Tensor:
    """Bilinear x2 with ``align_corners=True`` along ``axis`` (0: rows, 1: columns) of a window of a map of
    ``full`` cells starting at ``origin``, for output cells ``out_origin ..`` of the whole map's 2 x ``full``;
    output cells past 2 x ``full`` are zero (the pad to the skip's size). Reads outside the window clamp to
    its edge (wrong values that a caller crops off). Keeps ``x``'s layout."""
    dim = 2 + axis
    out = torch.arange(out_origin, out_origin + out_length, dtype=torch.float64)
    scale = (full - 1) / (2 * full - 1) if full > 1 else 0.0
    source = out * scale
    low = source.floor()
    fraction = (source - low).to(x.dtype)
    high = torch.clamp(low + 1, max=full - 1)
    last = x.shape[dim] - 1
    low_local = (low - origin).clamp(0, last).long().to(x.device)
    high_local = (high - origin).clamp(0, last).long().to(x.device)
    result = lerp_along(x, dim, low_local, high_local, fraction.to(x.device))
    inside = max(0, min(out_length, 2 * full - out_origin))
    result.narrow(dim, inside, out_length - inside).zero_()
    return result


def unet_levels(dim: int, depth: int) -> tuple[OriginalDoubleConv, nn.ModuleList, nn.ModuleList]:
    """The original UNet's ``inc``, ``down_layers`` and ``up_layers`` for bilinear upsampling (``factor`` 2)."""
    inc = OriginalDoubleConv(dim, dim)
    downs = nn.ModuleList()
    for level in range(depth):
        width_out = dim * 2 ** (level + 1) // (2 if level == depth - 1 else 1)
        downs.append(Down(dim * 2**level, width_out))
    ups = nn.ModuleList()
    for index in range(depth):
        width_out = dim * 2 ** (depth - index - 1) // (2 if index < depth - 1 else 1)
        ups.append(Up(dim * 2 ** (depth - index), width_out))
    return inc, downs, ups


def run_unet(
    inc: OriginalDoubleConv, downs: nn.ModuleList, ups: nn.ModuleList, x: torch.Tensor, window: MapWindow
) -> torch.Tensor:
    """The original UNet's features (before ``outc``) of ``x``, a window of the level-0 map (see module docstring)."""
    depth = len(downs)
    smallest = window.level(depth).full
    if min(smallest) < 1:
        raise ValueError(
            f"a latent map of {window.full[0]}x{window.full[1]} is too small for the original UNet's "
            f"{depth} poolings (at least {2**depth} cells per side)"
        )
    x = inc(x)
    skips = [x]
    for layer in downs:
        x = layer(x)
        skips.append(x)
    for index, layer in enumerate(ups):
        level = depth - 1 - index
        x = layer(x, skips[level], window.level(level + 1), window.level(level))
    return x


def unet_reach(depth: int) -> int:
    """Level-0 cells on each side of an output cell that can change it, from the UNet's input (a bound):
    2 for ``inc``; per pooling l, its double conv (2 x 2^l) and a cell of pooling; per upsampling to level
    l, a coarse cell (2^(l+1)) and its double conv (2 x 2^l)."""
    reach = 2
    for level in range(1, depth + 1):
        reach += 2 * 2**level + 2**level
    for level in range(depth):
        reach += 2 ** (level + 1) + 2 * 2**level
    return reach
