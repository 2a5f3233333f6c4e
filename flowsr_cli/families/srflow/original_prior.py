"""The original SRFlow-LP (FlowSR-LP code, Tsao et al., CVPR 2024) as its released checkpoints ran: a frozen
SRFlow and the original ``UNet`` prior (``models/unet.py``), for imported models (``srflow-lp-original``).

flowsr's own ``srflow-lp`` re-designed how its priors read their inputs; this variant keeps every detail of
the original ``test.py``, so imported weights give the original's output:

1. the LR is reflect-padded at the bottom/right to a multiple of 2 (SRFlow's own padding) and it is the
   PADDED LR whose bilinear x4 upsampling (``align_corners=False``) the flow encodes, without noise;
2. each latent is standardised per pixel over its channels with the UNBIASED standard deviation plus 1e-8;
3. two independent UNets, one per latent (the finest split's eps, then the last level's z), without the LR:
   a dense block, the UNet of :mod:`~flowsr_cli.families.common.original_unet` (``align_corners=True``
   upsampling, zero-padded to its skips) and a 1x1 conv; their outputs are the latents themselves;
4. the flow inverse of the two predicted latents, in that order, is the output (cropped to 4x the LR).

In tiles each UNet runs on its window of the whole image's latent map (:class:`MapWindow`), so away from a
crop's inner edges it gives what the whole image would; the flow, the upsampling and the UNets near those
edges are covered by the engine's halo and feathers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.errors import ImageError
from flowsr_cli.families.common.layout import channels_last
from flowsr_cli.families.common.original_unet import DenseBlock5C, MapWindow, OutConv, run_unet, unet_levels
from flowsr_cli.families.registry import Bound, make
from flowsr_cli.families.srflow.network import SCALE, SRFlow, SRFlowFeatures, pad_bottom_right
from flowsr_cli.families.srflow.prior import latent_levels

ORIGINAL_STD_EPS = 1e-8
"""Added to the per-pixel (unbiased) standard deviation, as the original ``test.py`` does."""

ORIGINAL_PREDICTOR_HALO = 96
"""LR context (--tile-pad auto) of the original prior's tiles. Its UNet on the last latent (LR / 2) may reach
154 LR pixels (:func:`~flowsr_cli.families.common.original_unet.unet_reach` and the dense block), less in
effect: on the tests' tiny imported pair (random tamed weights; tile 32 on a 120 x 240 LR of three B100
photos) tiles stayed within 6.5e-2 of untiled with 32 pixels, 2.9e-2 with 48, 8.5e-3 with 64, 2.1e-3 with
80 and 1.8e-4 with 96 (the flow alone: 1.5e-6 from 32)."""


def standardise_unbiased(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> zero mean and unit unbiased standard deviation (plus 1e-8) over each pixel's channels."""
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True)
    return (z - mean) / (std + ORIGINAL_STD_EPS)


class OriginalPriorUNets(nn.Module):
    """The original SRFlow-LP ``UNet``: for latent i (0: the split's eps, 1: the last level's z) the modules
    ``input_proj{i}`` (a dense block of growth ``dim``), ``inc{i}``, ``down_layers{i}``, ``up_layers{i}`` and
    ``outc{i}``, named as in the original so its state dict loads as it is."""

    def __init__(self, channels: Sequence[int], dim: int = 64, depth: int = 3) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.depth = depth
        for index, width in enumerate(self.channels):
            inc, downs, ups = unet_levels(dim, depth)
            setattr(self, f"input_proj{index}", DenseBlock5C(width, dim, dim))
            setattr(self, f"inc{index}", inc)
            setattr(self, f"down_layers{index}", downs)
            setattr(self, f"up_layers{index}", ups)
            setattr(self, f"outc{index}", OutConv(dim, width))

    def predict(self, index: int, z: torch.Tensor, window: MapWindow) -> torch.Tensor:
        """UNet ``index``'s output for the standardised latent ``z``, the window ``window`` of its whole map."""
        x = getattr(self, f"input_proj{index}")(z)
        parts = [getattr(self, f"{name}{index}") for name in ("inc", "down_layers", "up_layers")]
        return getattr(self, f"outc{index}")(run_unet(*parts, x, window))


class OriginalSRFlowLP(nn.Module):
    """A frozen SRFlow (``flow``, an ``srflow`` spec with two latents) and the original SRFlow-LP prior
    (``prior``: its ``dim`` and ``depth``, the released model's 64 and 3): see the module docstring.

    Inference only: the flow's parameters never require gradients and it stays in eval mode.
    """

    scale = SCALE
    halo = ORIGINAL_PREDICTOR_HALO
    spec_bounds: ClassVar[Mapping[str, Bound]] = {"prior.dim": Bound(1, 1024), "prior.depth": Bound(1, 6)}
    spec_parts: ClassVar[tuple[str, ...]] = ("flow",)

    def __init__(self, flow: dict[str, Any], prior: dict[str, Any]) -> None:
        super().__init__()
        flow_model = make(flow)
        if not isinstance(flow_model, SRFlow):
            raise TypeError(f"flow must be an 'srflow' spec, got {flow.get('name')!r}")
        layout = latent_levels(flow_model)
        if len(layout) != 2:
            raise TypeError(f"the original SRFlow-LP prior takes two latents; this flow has {len(layout)}")
        self.flow = flow_model
        self.flow.requires_grad_(False)
        self.flow.eval()
        self.levels = [level for _, level in layout]
        self.prior = OriginalPriorUNets([channels for channels, _ in layout], **prior)
        # Level l's latents are 2^(1-l) x the LR; a UNet pooling `depth` times there needs windows that start
        # on multiples of 2^depth: LR offsets in multiples of 2^(depth - 1 + l).
        self._unet_multiple = max(2 ** max(0, self.prior.depth - 1 + level) for level in self.levels)
        self.size_multiple = math.lcm(flow_model.size_multiple, self._unet_multiple)
        """LR offsets on this grid give the flow and both UNets the whole image's grid."""

    def train(self, mode: bool = True) -> OriginalSRFlowLP:
        """Set the prior's mode; the frozen flow always stays in eval mode."""
        super().train(mode)
        self.flow.eval()
        return self

    @property
    def min_side(self) -> int:
        """The shortest LR side the UNets can pool ``depth`` times after SRFlow's padding."""
        multiple = self.flow.size_multiple
        return max(1, math.ceil(self._unet_multiple / multiple) * multiple - multiple + 1)

    def initial_latents(self, features: SRFlowFeatures, lr: torch.Tensor) -> list[torch.Tensor]:
        """The standardised latents of the bilinear x4 upsampling of ``lr`` padded as the flow pads it
        (``features`` are the flow's of ``lr``), in :meth:`SRFlow.sample`'s order."""
        height, width = features.lr_size
        padded = pad_bottom_right(lr.float(), features.padded_size[0] - height, features.padded_size[1] - width)
        upsampled = F.interpolate(padded, scale_factor=SCALE, mode="bilinear", align_corners=False)
        with torch.autocast(lr.device.type, enabled=False):
            latents = self.flow.log_prob(upsampled, replace(features, lr_size=features.padded_size)).latents
        return [standardise_unbiased(z) for z in latents]

    def predict_latents(
        self,
        features: SRFlowFeatures,
        lr: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        whole: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """The prior's latents for an LR crop (B, 3, h, w) in [0, 1] and its features; the crop starts at
        ``origin`` (on the ``size_multiple`` grid) of an LR image of ``whole`` (height, width) pixels (None:
        the crop is the whole image). Refuses (:class:`ImageError`) an image too small for the UNets."""
        whole = features.lr_size if whole is None else whole
        if min(whole) < self.min_side:
            raise ImageError(
                f"the image is {whole[1]}×{whole[0]}, too small for this model's learned prior (at least "
                f"{self.min_side} pixels a side); use --prior gaussian"
            )
        if origin[0] % self.size_multiple or origin[1] % self.size_multiple:
            raise ValueError(f"a crop at {origin} is not on the prior's grid of {self.size_multiple} LR pixels")
        multiple = self.flow.size_multiple
        padded = (math.ceil(whole[0] / multiple) * multiple, math.ceil(whole[1] / multiple) * multiple)
        latents = self.initial_latents(features, lr)
        return [
            self.prior.predict(index, channels_last(z), MapWindow(_on_level(origin, level), _on_level(padded, level)))
            for index, (z, level) in enumerate(zip(latents, self.levels))
        ]

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (B, 3, h, w) in [0, 1] -> output (B, 3, 4h, 4w) on the [0, 1] scale (not clamped)."""
        with torch.autocast(lr.device.type, enabled=False):
            features = self.flow.encode(lr.float())
            return self.flow.sample(features, latents=self.predict_latents(features, lr))


def _on_level(lr_pair: tuple[int, int], level: int) -> tuple[int, int]:
    """An LR (rows, columns) pair on the grid of latent level ``level`` (2^(1-level) x the LR)."""
    return (lr_pair[0] * 2 // 2**level, lr_pair[1] * 2 // 2**level)
