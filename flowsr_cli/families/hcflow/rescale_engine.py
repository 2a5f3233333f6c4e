"""HCFlow image rescaling as a tiled engine, for `flowsr rescale down` and `flowsr rescale up`.

Forward (HR -> LR): exact, and the same bytes whatever the tiling. The LR needs only the main flow: per level a
Haar squeeze (each output cell from one 2x2 block of its input) and flow steps (an actnorm, then an Affine3shift
coupling whose net is a dense block of 3x3 convolutions). The engine runs it step by step over the whole image, each
step in fixed blocks of :data:`FORWARD_BLOCK` x :data:`FORWARD_BLOCK` cells of its level's grid, anchored at the
image's origin, each block read with the step's whole receptive field around it (:func:`conv_reach`: 5 cells for
the dense blocks). So every block gives exactly what the untiled step gives (up to float rounding), and which float
operations run depends only on the image and the model: the blocks are the same whatever ``--tile``, the memory or
the machine's load, hence so are the LR's bytes. The whole forward reaches up to :func:`forward_reach` LR pixels
(the original x4: 60; x2: 40), which tiling the whole network at once would have to read around every tile.
Memory: a step's input and output over the whole image (3 floats per HR pixel each, like the HR) and one block's
activations.

Inverse (LR -> HR): :class:`~flowsr_cli.engine.blended.BlendedUpscaler`'s halo tiles blended with linear feathers,
its latents tied to absolute positions (each latent row drawn from its own seed), so any tiling gives the untiled
result within :data:`INVERSE_HALO`'s measured tolerance, and its exploding-inverse guard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from flowsr_cli.engine.blended import BlendedUpscaler
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, UpscaleReport
from flowsr_cli.families.hcflow.rescaling import HCFlowRescaler, haar_squeeze
from flowsr_cli.families.registry import EngineOptions
from flowsr_cli.io.sizing import Size

FORWARD_BLOCK = 256
"""Side of the forward's fixed blocks, in cells of each level's grid (x4: 512 and 1024 HR pixels). Changing it may
change LR bytes (by float rounding), so it is a constant, never a setting."""
INVERSE_HALO = 24
"""LR pixels of context around each inverse tile (--tile-pad auto). Measured: see the tests of this module."""


def conv_reach(module: nn.Module) -> int:
    """How many cells away from an output cell a module's input can matter: the radii of its convolutions added
    up, as along a chain (a dense block's longest path runs through all of them)."""
    return sum(
        conv.dilation[0] * (conv.kernel_size[0] // 2) for conv in module.modules() if isinstance(conv, nn.Conv2d)
    )


def forward_reach(model: HCFlowRescaler) -> int:
    """How many LR pixels away from an LR pixel its HR can change it, at most, from the network's structure: level
    l's steps reach their nets' :func:`conv_reach` each, in cells of 2^(l+1) HR pixels. (A bound: a coupling
    changes only one group of channels, so a path may not use every step's reach.)"""
    hr_pixels = sum(
        2 ** (depth + 1) * sum(conv_reach(step.coupling.net) for step in level.steps)
        for depth, level in enumerate(model.flow_levels)
    )
    return math.ceil(hr_pixels / model.scale)


def _window(start: int, length: int, reach: int) -> tuple[slice, slice]:
    """(the block starting at ``start`` of an axis of ``length`` cells; the crop around it, ``reach`` more on each
    side within the axis) -> (crop, the block's place in the crop)."""
    stop = min(start + FORWARD_BLOCK, length)
    crop = slice(max(0, start - reach), min(length, stop + reach))
    return crop, slice(start - crop.start, stop - crop.start)


def _blocked(step: nn.Module, x: torch.Tensor, device: torch.device, done: Callable[[], None]) -> torch.Tensor:
    """``step(x)`` computed in the fixed blocks (see the module docstring); ``done`` is called after each block."""
    reach = conv_reach(step)
    height, width = x.shape[-2:]
    output = torch.empty_like(x)
    for top in range(0, height, FORWARD_BLOCK):
        rows, kept_rows = _window(top, height, reach)
        for left in range(0, width, FORWARD_BLOCK):
            columns, kept_columns = _window(left, width, reach)
            crop = x[..., rows, columns].contiguous().to(device)
            block = step(crop)[..., kept_rows, kept_columns]
            output[..., top : top + block.shape[-2], left : left + block.shape[-1]] = block.cpu()
            done()
    return output


def _blocks(height: int, width: int) -> int:
    return math.ceil(height / FORWARD_BLOCK) * math.ceil(width / FORWARD_BLOCK)


@dataclass
class _InverseFlow:
    """A rescaler as :class:`~flowsr_cli.engine.blended.TiledFlow`: the features of an LR crop are the crop."""

    rescaler: HCFlowRescaler
    size_multiple: int = 1
    """The inverse only unsqueezes, so the latents of a crop starting anywhere are a window of the image's."""

    @property
    def scale(self) -> int:
        """The rescaler's scale."""
        return self.rescaler.scale

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """The LR crop itself: the inverse computes its conditions level by level."""
        return lr

    def latent_shapes(self, lr: torch.Tensor) -> list[tuple[int, int, int]]:
        """The rescaler's latent shapes for the crop, coarsest first."""
        return self.rescaler.latent_shapes(lr)


@dataclass
class RescalingInverse(BlendedUpscaler):
    """The rescaler's inverse at heat = temperature from N(0, I) latents, tile by tile."""

    model: _InverseFlow
    default_halo: ClassVar[int] = INVERSE_HALO

    def _sample(
        self,
        features: torch.Tensor,
        latents: list[torch.Tensor] | None,
        scale: float,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        """The inverse of the LR crop ``features`` at heat ``scale`` (zero latents: the prior means)."""
        if latents is None:
            latents = [features.new_zeros(1, *shape) for shape in self.model.latent_shapes(features)]
        hr = self.model.rescaler.upscale(features, scale, latents=latents)
        if progress is not None:
            progress(1.0)
        return hr

    def _float_features(self, features: torch.Tensor) -> torch.Tensor:
        """The LR crop in float32."""
        return features.float()

    def _bytes_per_input_pixel(self) -> float:
        """Peak float32 bytes per LR pixel: at each level (the k-th coarsest has 4^k cells per LR pixel), seven times
        its widest convolution's activations (a dense block keeps every layer's output and concatenates them again
        for each conv), its condition and the features of it and every coarser level; then the output. On the
        original x4 this gives 23.5 kB, where 17 to 23 kB were measured (peak RSS, untiled, LR 64 to 160)."""
        total = 0.0
        for depth, level in enumerate(reversed(self.model.rescaler.flow_levels)):
            convolutions = [conv for conv in level.modules() if isinstance(conv, nn.Conv2d)]
            widest = max(max(conv.in_channels, conv.out_channels) for conv in convolutions)
            condition = level.cond_flow.conv_first.in_channels
            features = level.cond_flow.feature_channels * (depth + 1)
            total += 4**depth * (7 * widest + condition + features)
        return 4.0 * (total + 3 * 3 * self.model.scale**2)


@dataclass
class HCFlowRescaleEngine:
    """An HCFlow rescaler run tile by tile on ``device`` (see the module docstring)."""

    model: HCFlowRescaler
    device: torch.device
    name: str
    tile: str | int = "auto"
    """Inverse tiles' side in LR pixels (auto: fits the free memory; 0: untiled). The forward ignores it."""
    tile_pad: str | int = "auto"
    notes: list[str] = field(default_factory=list)

    @property
    def scale(self) -> int:
        """The rescaler's scale (2^levels)."""
        return self.model.scale

    @property
    def default_temperature(self) -> float:
        """The heat the original restores at (1)."""
        return self.model.default_temperature

    def downscale(self, hr: torch.Tensor, progress: ProgressCallback | None = None) -> torch.Tensor:
        """HR (1, 3, H, W) on the CPU, H and W multiples of the scale -> the model's LR (1, 3, H / s, W / s) on the
        CPU, neither clamped nor rounded, computed in the fixed blocks."""
        if hr.shape[-2] % self.scale or hr.shape[-1] % self.scale:
            raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not a multiple of the scale {self.scale}")
        levels = self.model.flow_levels
        total = sum(
            len(level.steps) * _blocks(hr.shape[-2] >> (depth + 1), hr.shape[-1] >> (depth + 1))
            for depth, level in enumerate(levels)
        )
        finished = 0

        def done() -> None:
            nonlocal finished
            finished += 1
            if progress is not None:
                progress(finished / total)

        x = hr
        with torch.inference_mode():
            for level in levels:
                x = haar_squeeze(x)
                for step in level.steps:
                    x = _blocked(step, x, self.device, done)
                x = x[:, : level.kept]
        return x.contiguous()

    def upscale(
        self,
        lr: torch.Tensor,
        sink: TileSink,
        seed: int,
        temperature: float,
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """The inverse of LR (1, 3, h, w) on the CPU in halo tiles into ``sink``, latents drawn from ``seed``."""
        inverse = RescalingInverse(
            _InverseFlow(self.model),
            self.device,
            torch.float32,
            temperature,
            self.name,
            tile=self.tile,
            tile_pad=self.tile_pad,
            notes=self.notes,
        )
        size = Size(self.scale * lr.shape[-1], self.scale * lr.shape[-2])
        return inverse.upscale(lr, size, sink, (seed,), progress)


def run_hcflow_rescale(model: HCFlowRescaler, options: EngineOptions) -> HCFlowRescaleEngine:
    """The rescaling engine of an HCFlow rescaler (the options' temperature and precision are not used: each LR
    records its heat, and both directions run in float32)."""
    return HCFlowRescaleEngine(
        model, options.device, options.name, tile=options.tile, tile_pad=options.tile_pad, notes=options.notes
    )
