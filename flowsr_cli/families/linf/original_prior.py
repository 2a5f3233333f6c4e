"""The original LINF-LP (FlowSR-LP code, Tsao et al., CVPR 2024) as its released checkpoints ran: the
"original" variant of the learned prior's latent inputs, for imported models (``linf-lp-original``).

flowsr's own ``linf-lp`` re-designed how the latent module reads its inputs; this variant keeps every
detail of the original code so imported weights give the original's output:

1. the pseudo-residual ``u - up(down(u))`` (u the bilinear upsampling of the LR) shrinks and enlarges with
   plain bilinear interpolation (``align_corners=False``, no antialiasing);
2. the output is cut into whole 3x3 blocks by zero padding: ``H // 3 + 1`` block rows, so a side that is a
   multiple of 3 still gets a whole block past the image, which the UNet sees; blocks whose centre pixel is
   padding are queried at the image centre (their coordinates were zero-padded), in both flow directions;
3. the LR branch is ``Conv2d(3, 27, 3, stride=3, padding=1)`` and a dense block, stretched to the latent
   grid by one bilinear resize of the whole map;
4. the UNet upsamples with ``align_corners=True`` and pads to its skips (:mod:`..common.original_unet`);
5. the latent module's output is the latent itself (no fade, no temperature).

Everything is computed for windows of the latent grid with the whole image's geometry, so tiles give the
untiled (whole-image) result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.errors import ImageError
from flowsr_cli.families.common.coords import bilinear_base, patch_centres, to_window
from flowsr_cli.families.common.layout import channels_last, lerp_along
from flowsr_cli.families.common.original_unet import (
    DENSE_CONVS,
    DenseBlock5C,
    MapWindow,
    OutConv,
    run_unet,
    unet_levels,
    unet_reach,
)
from flowsr_cli.families.linf.network import LRFeatures
from flowsr_cli.families.linf.prior import LINFLP, _lr_span
from flowsr_cli.families.registry import Bound

LR_STRIDE = 3
"""The LR branch's conv: kernel 3, stride 3, padding 1, so cell k reads LR pixels 3k-1 .. 3k+1."""


class OriginalLatentModule(nn.Module):
    """The original ``UNet`` of LINF-LP (``models/unet.py``), its modules under the original names.

    Spec arguments are the original's: ``in_chans`` (the latent vector size, 27 for 3x3 patches), ``dim``
    (the UNet's width, 64) and ``depth`` (its poolings, 3); bilinear upsampling, as the released models.
    """

    spec_bounds: ClassVar[Mapping[str, Bound]] = {
        "in_chans": Bound(1, 3 * 15 * 15),
        "dim": Bound(2, 1024),
        "depth": Bound(1, 6),
    }

    def __init__(self, in_chans: int = 27, dim: int = 64, depth: int = 3) -> None:
        super().__init__()
        if dim % 2:
            raise TypeError("dim must be even (the two branches have dim / 2 channels each)")
        self.dim = in_chans
        """The latent vector size (the original's ``in_chans``)."""
        self.depth = depth
        self.input_proj = DenseBlock5C(in_chans, dim // 2, dim // 2)
        self.lr_proj = nn.Sequential(
            nn.Conv2d(3, in_chans, 3, stride=LR_STRIDE, padding=1),
            nn.LeakyReLU(0.2),
            DenseBlock5C(in_chans, dim // 2, dim // 2),
        )
        self.inc, self.down_layers, self.up_layers = unet_levels(dim, depth)
        self.outc = OutConv(dim, in_chans)

    @property
    def multiple(self) -> int:
        """Latent windows must start on multiples of this (the UNet's pooling factor)."""
        return 2**self.depth

    @property
    def receptive_field(self) -> int:
        """Latent cells on each side of an output cell that can change it (a bound): the z branch's dense
        block, the UNet's reach and a cell of the LR branch's bilinear stretch."""
        return DENSE_CONVS + unet_reach(self.depth) + 1

    @property
    def lr_reach(self) -> int:
        """LR pixels around a latent cell's own LR position that its LR-branch value may read (a bound): two
        stride-3 cells widened by the dense block, and up to 6 pixels by which the whole-map stretch puts a
        cell away from its own position."""
        return LR_STRIDE * (DENSE_CONVS + 2) + 6

    def forward(self, z_init: torch.Tensor, features: LRFeatures, window: MapWindow) -> torch.Tensor:
        """z_hat (B, D, h, w) for z_init, the window ``window`` of the latent grid, from the LR (crop) of
        ``features`` (in [-1, 1], whole-image coordinates)."""
        latent = self.input_proj(z_init)
        lr_embedding = self._lr_embedding(features, window, tuple(z_init.shape[-2:]))
        joined = torch.cat([latent, lr_embedding.to(latent.dtype)], dim=1)
        return self.outc(run_unet(self.inc, self.down_layers, self.up_layers, joined, window))

    def _lr_embedding(self, features: LRFeatures, window: MapWindow, shape: tuple[int, ...]) -> torch.Tensor:
        """The LR branch, stretched from its whole map to the whole latent grid, at the window's cells."""
        lr = features.lr
        axes = [
            _StretchAxis.plan(features.size[axis], window.full[axis], window.origin[axis], shape[axis])
            for axis in (0, 1)
        ]
        pixels = [
            _lr_window(lr, axis, features.origin[axis], features.size[axis], axes[axis].pixels) for axis in (0, 1)
        ]
        crop = lr[..., pixels[0][0], :][..., pixels[1][0]]
        crop = F.pad(crop, (*pixels[1][1], *pixels[0][1]))
        stem = self.lr_proj[0]
        cells = self.lr_proj[2](F.leaky_relu(F.conv2d(crop, stem.weight, stem.bias, stride=LR_STRIDE), 0.2))
        for axis, stretch in enumerate(axes):
            cells = stretch.apply(cells, 2 + axis)
        return cells


@dataclass(frozen=True)
class _StretchAxis:
    """Along one axis: the LR-branch cells ``first_cell .. stop_cell`` a window of latent cells reads
    through the whole-map bilinear resize (``align_corners=False``), and each latent cell's two cells
    (indices from ``first_cell``) and weight of the second."""

    first_cell: int
    stop_cell: int
    low: torch.Tensor
    high: torch.Tensor
    fraction: torch.Tensor

    @staticmethod
    def plan(lr_length: int, latent_full: int, latent_origin: int, count: int) -> _StretchAxis:
        """For ``count`` latent cells from ``latent_origin`` of a grid of ``latent_full``, over an LR axis of
        ``lr_length`` pixels; the cells read are widened by the dense block's reach."""
        cells_full = (lr_length - 1) // LR_STRIDE + 1
        cells = torch.arange(latent_origin, latent_origin + count, dtype=torch.float64)
        source = ((cells + 0.5) * (cells_full / latent_full) - 0.5).clamp(min=0)
        low = source.floor()
        high = torch.clamp(low + 1, max=cells_full - 1)
        first = max(0, int(low.min()) - DENSE_CONVS)
        stop = min(cells_full, int(high.max()) + DENSE_CONVS + 1)
        return _StretchAxis(first, stop, (low - first).long(), (high - first).long(), source - low)

    @property
    def pixels(self) -> range:
        """The LR pixels (past the image: the conv's zero padding) the cells read."""
        return range(LR_STRIDE * self.first_cell - 1, LR_STRIDE * self.stop_cell - 1)

    def apply(self, cells: torch.Tensor, dim: int) -> torch.Tensor:
        """The stretched values along ``dim`` of the cells ``first_cell .. stop_cell``."""
        weight = self.fraction.to(cells.device, cells.dtype)
        return lerp_along(cells, dim, self.low.to(cells.device), self.high.to(cells.device), weight)


def _lr_window(lr: torch.Tensor, axis: int, origin: int, length: int, pixels: range) -> tuple[slice, tuple[int, int]]:
    """The slice of an LR crop (at ``origin`` of an axis of ``length``) holding ``pixels`` inside the image,
    and the zero rows to add before and after it for those outside."""
    inside = range(max(pixels.start, 0), min(pixels.stop, length))
    crop_length = int(lr.shape[-2 + axis])
    if inside.start < origin or inside.stop > origin + crop_length:
        raise ValueError(
            f"the LR crop {origin}..{origin + crop_length} does not hold LR pixels {inside.start}..{inside.stop}"
        )
    return slice(inside.start - origin, inside.stop - origin), (inside.start - pixels.start, pixels.stop - inside.stop)


class OriginalLINFLP(LINFLP):
    """A LINF whose edge cells are queried at the image centre (``query_geometry="original"``) and the
    original latent module (an ``lp-latent-original`` spec): the original LINF-LP, see the module docstring.
    """

    latent_type: ClassVar[type[nn.Module]] = OriginalLatentModule

    def __init__(self, flow: dict[str, Any], latent: dict[str, Any]) -> None:
        super().__init__(flow, latent)
        if self.flow.query_geometry != "original":
            raise TypeError("an original LINF-LP's flow must query its edge cells at the image centre")

    def latent_count(self, out_length: int) -> int:
        """Whole zero-padded blocks: ``out_length // p + 1`` (one past the image even when p divides it)."""
        return out_length // self.patch_size + 1

    def _window_residual(
        self, features: LRFeatures, size: tuple[int, int], pixel_rows: range, pixel_columns: range
    ) -> torch.Tensor:
        """The plain-bilinear pseudo-residual at output pixels rows x columns, zero past the image."""
        rows = range(pixel_rows.start, min(pixel_rows.stop, size[0]))
        columns = range(pixel_columns.start, min(pixel_columns.stop, size[1]))
        residual = torch.zeros(features.lr.shape[0], 3, len(pixel_rows), len(pixel_columns), device=features.lr.device)
        if len(rows) and len(columns):
            residual[..., : len(rows), : len(columns)] = self._plain_residual(features, size, rows, columns)
        return residual

    def _plain_residual(self, features: LRFeatures, size: tuple[int, int], rows: range, columns: range) -> torch.Tensor:
        """``u - up(down(u))`` with plain bilinear resizes, at output pixels rows x columns inside the image."""
        full_height, full_width = features.size
        lr_rows = _lr_span(rows, size[0], full_height)
        lr_columns = _lr_span(columns, size[1], full_width)
        u_rows = _joined(_shrink_reads(lr_rows, size[0], full_height), rows)
        u_columns = _joined(_shrink_reads(lr_columns, size[1], full_width), columns)
        upsampled = self.flow.bilinear_base(features, size, u_rows, u_columns)
        device = upsampled.device
        shrink_y = to_window(
            patch_centres(full_height, 1, device)[lr_rows.start : lr_rows.stop], size[0], u_rows.start, len(u_rows)
        )
        shrink_x = to_window(
            patch_centres(full_width, 1, device)[lr_columns.start : lr_columns.stop],
            size[1],
            u_columns.start,
            len(u_columns),
        )
        shrunk = bilinear_base(upsampled, shrink_y, shrink_x)
        window = LRFeatures(
            lr=shrunk, encoded=shrunk, origin=(lr_rows.start, lr_columns.start), full_size=(full_height, full_width)
        )
        enlarged = self.flow.bilinear_base(window, size, rows, columns)
        top, left = rows.start - u_rows.start, columns.start - u_columns.start
        return upsampled[..., top : top + len(rows), left : left + len(columns)] - enlarged

    def _refine(
        self, z_init: torch.Tensor, features: LRFeatures, size: tuple[int, int], rows: range, columns: range
    ) -> torch.Tensor:
        """The original latent module's output for the window: the latent itself (run channels-last)."""
        if min(self.latent_shape(size)) < self.latent.multiple:
            smallest = self.patch_size * (self.latent.multiple - 1)
            raise ImageError(
                f"an output of {size[1]}x{size[0]} pixels is too small for the original LINF-LP, whose UNet "
                f"needs at least {smallest} pixels per side"
            )
        window = MapWindow((rows.start, columns.start), self.latent_shape(size))
        return self.latent(channels_last(z_init), replace(features, lr=channels_last(features.lr)), window)


def _shrink_reads(lr_pixels: range, out_length: int, lr_length: int) -> range:
    """The output pixels a plain bilinear shrink from ``out_length`` to ``lr_length`` reads for these LR pixels."""
    scale = out_length / lr_length
    first = math.floor(max((lr_pixels.start + 0.5) * scale - 0.5, 0.0))
    last = math.floor(max((lr_pixels.stop - 0.5) * scale - 0.5, 0.0)) + 1
    return range(first, min(last, out_length - 1) + 1)


def _joined(first: range, second: range) -> range:
    """The smallest range holding both."""
    return range(min(first.start, second.start), max(first.stop, second.stop))
