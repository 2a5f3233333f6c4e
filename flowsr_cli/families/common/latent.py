"""The latent module G of the learned prior (Tsao et al., CVPR 2024): G(z_init, LR) -> z_hat.

G refines an initial latent grid z_init (B, D, Hp, Wp) of a frozen flow into the latent grid z_hat
whose flow inverse is the output. Two branches, each a 5-conv dense block, embed z_init and the LR
image; the LR branch is strided by 3 and then read at the physical positions of the latent centres,
so LR features and latents stay aligned for any output size. A UNet maps the concatenation to z_hat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.derived import tensors_key
from flowsr_cli.families.common.layout import in_autocast_dtype, like
from flowsr_cli.families.registry import Bound

LR_STRIDE = 3
"""The LR branch's conv has kernel 3 and stride 3: cell k covers LR pixels 3k..3k+2."""
DENSE_CONVS = 5
WIDTH = Bound(1, 1024)
"""Branch channels and growth (the paper: 32)."""
UNET_WIDTHS = Bound(1, 4096, items=8)
"""The UNet's widths per level (the paper: 64, 128, 256, 256); each level doubles the size multiple."""
LATENT_BOUNDS: Mapping[str, Bound] = {"branch_channels": WIDTH, "growth": WIDTH, "widths": UNET_WIDTHS}
"""Bounds of the sizes of a latent module (LINF's and each of SRFlow-LP's levels)."""


def lr_positions(
    out_length: int, patch: int, lr_length: int, device: torch.device | str = "cpu", count: int | None = None
) -> torch.Tensor:
    """Where the centres of the latent cells along one axis of an output of ``out_length`` pixels fall on
    the LR image, in LR pixel units (pixel i's centre is at i): ``ceil(out_length / patch)`` cells, or
    ``count`` (cells past the image extrapolate on the patch grid)."""
    count = math.ceil(out_length / patch) if count is None else count
    index = torch.arange(count, dtype=torch.float32, device=device)
    centres = -1.0 + patch * (2.0 * index + 1.0) / out_length
    return (centres + 1.0) * lr_length / 2.0 - 0.5


class DenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the input and all earlier outputs (LeakyReLU 0.2 after the first
    four); the fifth gives ``out_channels``. No residual: input and output widths differ. Initialised
    like the paper's (Kaiming normal scaled by 0.1, zero biases)."""

    def __init__(self, in_channels: int, growth: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels + index * growth, growth, 3, padding=1) for index in range(DENSE_CONVS - 1)
        )
        self.fuse = nn.Conv2d(in_channels + (DENSE_CONVS - 1) * growth, out_channels, 3, padding=1)
        self.activation = nn.LeakyReLU(0.2, inplace=True)
        with torch.no_grad():
            for conv in [*self.convs, self.fuse]:
                nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
                conv.weight.mul_(0.1)
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h, w)."""
        features = [in_autocast_dtype(x)]
        for conv in self.convs:
            features.append(self.activation(conv(torch.cat(features, dim=1))))
        return self.fuse(torch.cat(features, dim=1))


class DoubleConv(nn.Sequential):
    """Two {3x3 conv without bias, BatchNorm, LeakyReLU 0.2}.

    In eval mode without gradients (inference) each BatchNorm is folded into its conv's weights and
    bias, a pass less over every feature map; the folded weights are kept until a tensor changes."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self._folded_cache: tuple[tuple[object, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h, w)."""
        if self.training or torch.is_grad_enabled():
            return super().forward(x)
        for weight, bias in self._folded():
            x = F.leaky_relu_(F.conv2d(x, weight, bias, padding=1), 0.2)
        return x

    def _folded(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of each conv with its BatchNorm's running statistics and affine folded in."""
        key = tensors_key(tensor for layer in self for tensor in (*layer.parameters(), *layer.buffers()))
        if self._folded_cache is None or self._folded_cache[0] != key:
            pairs = []
            for conv, norm in ((self[0], self[1]), (self[3], self[4])):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                pairs.append((conv.weight * scale.view(-1, 1, 1, 1), norm.bias - norm.running_mean * scale))
            self._folded_cache = (key, pairs)
        return self._folded_cache[1]


class UNet(nn.Module):
    """A UNet with ``len(widths)`` resolution levels (the paper's "depth 3" is 3 poolings).

    Level l has ``widths[l]`` channels on the way down (max-pool 2, double conv); on the way up each
    level upsamples the coarser output bilinearly by 2, concatenates the skip and applies a double
    conv (middle width half its input) giving ``widths[max(l - 1, 0)]`` channels, as in the paper.
    Inputs must be multiples of ``multiple`` in both sides.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = len(widths)
        self.down = nn.ModuleList(
            DoubleConv(width_in, width_out, width_out) for width_in, width_out in zip((in_channels, *widths), widths)
        )
        self.up = nn.ModuleList()
        coarse = widths[-1]
        for level in reversed(range(self.levels - 1)):
            joined = coarse + widths[level]
            coarse = widths[max(level - 1, 0)]
            self.up.append(DoubleConv(joined, coarse, joined // 2))
        self.out_channels = coarse

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (the total pooling factor)."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, h, w) -> (B, out_channels, h, w)."""
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.down):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([skips.pop(), x], dim=1))
        return x


class LatentModule(nn.Module):
    """G(z_init, LR) -> z_hat on a latent grid of D-vectors (D = ``dim``; 27 for the 3x3 patch flow).

    The paper's size (~4.6 M parameters) is the default: ``branch_channels=32, growth=32,
    widths=(64, 128, 256, 256)``.
    """

    spec_bounds: ClassVar[Mapping[str, Bound]] = {"dim": Bound(1, 3 * 15 * 15), **LATENT_BOUNDS}

    def __init__(
        self,
        dim: int = 27,
        branch_channels: int = 32,
        growth: int = 32,
        widths: tuple[int, ...] | list[int] = (64, 128, 256, 256),
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths:
            raise TypeError("widths needs at least one level")
        self.dim = dim
        self.latent_branch = DenseBlock(dim, growth, branch_channels)
        self.lr_stem = nn.Conv2d(3, dim, LR_STRIDE, stride=LR_STRIDE)
        self.lr_branch = DenseBlock(dim, growth, branch_channels)
        self.unet = UNet(2 * branch_channels, widths)
        self.head = nn.Conv2d(self.unet.out_channels, dim, 1)

    @property
    def multiple(self) -> int:
        """Latent windows must start on multiples of this (the UNet's pooling factor)."""
        return self.unet.multiple

    @property
    def receptive_field(self) -> int:
        """Latent cells on each side of an output cell that can change it, in eval mode (in training
        mode BatchNorm's batch statistics couple every cell). An upper bound, attained for some
        alignments to the pooling grid.

        In latent (level 0) cells: the z_init dense block reaches 5 cells; a 3x3 conv at level l
        reaches 2**l more; a max-pool keeps the reach of the cells it covers; a bilinear x2 up to level
        l reads one level-(l+1) cell further (2**(l+1)). For the paper's 4 levels (3 poolings):
        (5 + 2) + (4 + 8 + 16) + (8 + 8) + (4 + 4) + (2 + 2) = 63. The LR branch enters after its dense
        block, so it reaches 5 cells less on the latent grid; its reach on the LR is :attr:`lr_reach`.
        """
        reach = DENSE_CONVS + 2
        for level in range(1, self.unet.levels):
            reach += 2 * 2**level
        for level in range(self.unet.levels - 1):
            reach += 2 ** (level + 1) + 2 * 2**level
        return reach

    @property
    def lr_reach(self) -> int:
        """The LR-branch value read at LR position y depends only on LR pixels x with |x - y| < lr_reach
        (a tight bound): it reads two neighbouring stride-3 cells, each widened by the dense block's 5
        cells of 3 pixels."""
        return LR_STRIDE * (DENSE_CONVS + 2) - 2

    def encode_lr(self, lr: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """LR-branch features (B, branch_channels, len(rows), len(columns)) read bilinearly, with border
        clamping, at LR pixel positions ``rows`` x ``columns`` (see :func:`lr_positions`).

        The LR is padded at the bottom/right (replicate) to a multiple of 3, so cell k of the strided
        map covers LR pixels 3k..3k+2 and its centre is LR pixel 3k+1.
        """
        height, width = lr.shape[-2:]
        pad_bottom, pad_right = -height % LR_STRIDE, -width % LR_STRIDE
        if pad_bottom or pad_right:
            lr = like(F.pad(lr, (0, pad_right, 0, pad_bottom), mode="replicate"), lr)
        cells = self.lr_branch(F.leaky_relu(self.lr_stem(lr), 0.2))
        cell_rows, cell_columns = cells.shape[-2:]
        ys = (2.0 * (rows - 1.0) / LR_STRIDE + 1.0) / cell_rows - 1.0
        xs = (2.0 * (columns - 1.0) / LR_STRIDE + 1.0) / cell_columns - 1.0
        sample_points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        sample_points = sample_points.to(cells.dtype).expand(lr.shape[0], -1, -1, -1)
        return F.grid_sample(cells, sample_points, mode="bilinear", padding_mode="border", align_corners=False)

    def forward(
        self, z_init: torch.Tensor, lr: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
    ) -> torch.Tensor:
        """z_hat (B, D, Hp, Wp) from z_init (B, D, Hp, Wp) and the LR (B, 3, h, w) in [-1, 1]; ``rows``
        (Hp,) and ``columns`` (Wp,) are the latent centres' LR pixel positions (:func:`lr_positions`).

        The UNet input is zero-padded at the bottom/right to a multiple of its pooling factor and the
        output cropped back, so any grid size works and pooling windows stay on the global grid.
        """
        height, width = z_init.shape[-2:]
        lr_features = like(in_autocast_dtype(self.encode_lr(lr, rows, columns)), lr)  # grid_sample gives float32
        joined = torch.cat([self.latent_branch(z_init), lr_features], dim=1)
        multiple = self.unet.multiple
        joined = F.pad(joined, (0, -width % multiple, 0, -height % multiple))
        return _pointwise(self.head, self.unet(joined))[..., :height, :width]


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv as one matrix product over channels-last pixels (PyTorch runs channels-last 1x1 convs
    on a slow path); the result is channels-last in memory."""
    pixels = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
    return pixels.permute(0, 3, 1, 2)
