"""SRFlow (Lugmayr et al., ECCV 2020): a conditional Glow over the HR image given RRDB features of the LR (fixed x4).

Conventions (all methods follow them):

* Images are float in [0, 1], and both the RRDB conditioner and the flow see them unchanged, as in the
  original code (so SRFlow's weights keep their meaning: ``flowsr models import`` converts them exactly).
* Levels are numbered from 1 (finest). Level l squeezes to HR / 2^l = LR * 2^(2-l): for the paper's 3
  levels that is 2xLR, LR and LR/2. Each level: squeeze, ``unconditional_steps`` x {actnorm, 1x1 conv},
  ``steps`` x {actnorm, 1x1 conv, affine injector, affine coupling}, then a split if it is in ``split_levels``.
* Conditioning (as SRFlow's ``rrdbPreprocessing``): the RRDB trunk feature ``t = f + conv_body(f)``, f the
  last block's output (SRFlow's RRDBNet; ESRGAN's global skip starts at ``conv_first`` instead), resized per
  level: 2xLR ``upconv(nearest_x2(t))`` (SRFlow's ``upconv1``, no activation), LR ``t``, below LR bilinear
  (``align_corners=False``; at LR/2 that is the 2x2 mean); to it the outputs of the RRDB blocks listed in
  ``feature_blocks`` (0-based, after the block) are concatenated, resized by nearest sampling. So
  ``cond_channels = rrdb_channels * (1 + len(feature_blocks))``: 64 x 5 = 320 for the paper.
* Latents: for each split level (finest first) the split-off channels standardised by their learned prior,
  then the last level's output, which has a standard normal prior. For an h x w LR and the paper's layout:
  ``[(B, 6, 2h, 2w), (B, 96, h/2, w/2)]``. All are N(0, I) under the model: temperature t samples t * N(0, I).
* Sizes that the levels cannot halve (an odd LR side for 3 levels): the LR is reflect-padded at the bottom
  and right to a multiple of ``2^(levels-2)`` and the HR by 4x as much; latents have the padded size and
  :meth:`SRFlow.sample` crops back. Likelihoods are then those of the padded HR image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.encoders import RRDB
from flowsr_cli.families.common.flow_layers import FlowStep, Split, Squeeze, gaussian_log_density, standard_normal
from flowsr_cli.families.common.layout import channels_last
from flowsr_cli.families.registry import Bound

SCALE = 4
DEQUANTISATION_BINS = 32
"""Uniform dequantisation noise has width 1/32 (SRFlow's ``quant: 32``)."""


@dataclass
class SRFlowFeatures:
    """What SRFlow computes once per LR image and reuses in both directions."""

    conditions: list[torch.Tensor]
    """One conditioning tensor per level (level 1 first), (B, cond_channels, H_l, W_l) for the padded LR."""
    lr_size: tuple[int, int]
    """The LR (height, width) before padding."""
    padded_size: tuple[int, int]
    """The LR (height, width) after padding; latents and HR are padded to 4x this."""


class SRFlowLogProb(NamedTuple):
    """Result of :meth:`SRFlow.log_prob`."""

    log_prob: torch.Tensor
    """log p(HR | LR) in nats per image, (B,)."""
    latents: list[torch.Tensor]
    """The latents of HR, in :meth:`SRFlow.sample`'s order."""


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class SRFlowConditioner(nn.Module):
    """SRFlow's RRDB network without its image head: per-level conditioning tensors from the LR."""

    def __init__(self, channels: int, blocks: int, growth: int, feature_blocks: Sequence[int]) -> None:
        super().__init__()
        self.feature_blocks = tuple(feature_blocks)
        self.out_channels = channels * (1 + len(self.feature_blocks))
        self.conv_first = _conv3x3(3, channels)
        self.body = nn.Sequential(*(RRDB(channels, growth) for _ in range(blocks)))
        self.conv_body = _conv3x3(channels, channels)
        self.upconv = _conv3x3(channels, channels)

    def forward(self, lr: torch.Tensor, levels: int) -> list[torch.Tensor]:
        """(B, 3, h, w) in [0, 1], h and w divisible by 2^(levels-2) -> one tensor per level (module docstring)."""
        features = self.conv_first(lr)
        taps: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.body):
            features = block(features)
            if index in self.feature_blocks:
                taps[index] = features
        trunk = features + self.conv_body(features)
        stacked = torch.cat([taps[index] for index in self.feature_blocks], dim=1) if taps else None
        height, width = lr.shape[-2:]
        conditions = []
        for level in range(1, levels + 1):
            if level == 1:
                base = self.upconv(F.interpolate(trunk, scale_factor=2, mode="nearest"))
            elif level == 2:
                base = trunk
            else:
                size = (height >> (level - 2), width >> (level - 2))
                base = F.interpolate(trunk, size=size, mode="bilinear", align_corners=False)
            if stacked is not None:
                base = torch.cat([base, F.interpolate(stacked, size=base.shape[-2:], mode="nearest")], dim=1)
            conditions.append(base)
        return conditions


class FlowLevel(nn.Module):
    """One level: squeeze, unconditional steps, conditional steps, and optionally a :class:`Split`."""

    def __init__(
        self, in_channels: int, cond_channels: int, hidden: int, steps: int, unconditional_steps: int, split: bool
    ) -> None:
        super().__init__()
        channels = 4 * in_channels
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList(
            [FlowStep(channels, cond_channels, hidden, conditional=False) for _ in range(unconditional_steps)]
            + [FlowStep(channels, cond_channels, hidden, conditional=True) for _ in range(steps)]
        )
        self.split = Split(channels) if split else None
        self.out_channels = self.split.kept if self.split is not None else channels

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x -> (output, log-det incl. the split prior's log-likelihood, split latent or None)."""
        x, logdet = self.squeeze(x)
        for step in self.steps:
            x, step_logdet = step(x, cond)
            logdet = logdet + step_logdet
        if self.split is None:
            return x, logdet, None
        x, prior_log_likelihood, eps = self.split(x)
        return x, logdet + prior_log_likelihood, eps

    def inverse(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        eps: torch.Tensor | None = None,
        after_step: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """output (and the split latent, if this level splits) -> input; ``after_step`` is called after each
        flow step (for progress)."""
        if self.split is not None:
            if eps is None:
                raise ValueError("a splitting level needs its latent")
            x = self.split.inverse(x, eps)
        for step in reversed(self.steps):
            x = step.inverse(x, cond)
            if after_step is not None:
                after_step()
        return self.squeeze.inverse(x)


def pad_bottom_right(x: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """Pad at the bottom and right by reflection, as SRFlow pads odd sizes (replicate where the image is too
    small to reflect)."""
    if rows == 0 and columns == 0:
        return x
    mode = "reflect" if rows < x.shape[-2] and columns < x.shape[-1] else "replicate"
    return F.pad(x, (0, columns, 0, rows), mode=mode)


class SRFlow(nn.Module):
    """SRFlow x4. Paper defaults (~39 M parameters); every size is a spec argument for small variants.

    ``feature_blocks`` are 0-based RRDB block indices; ``split_levels`` are 1-based level numbers
    (``(1,)``: only the finest level splits off half its channels, as in the paper's models).
    """

    scale = SCALE
    spec_bounds: ClassVar[Mapping[str, Bound]] = {
        "rrdb_blocks": Bound(0, 128),
        "rrdb_channels": Bound(1, 1024),
        "growth": Bound(1, 1024),
        "feature_blocks": Bound(0, 127, items=128),
        "steps": Bound(0, 64),
        "unconditional_steps": Bound(0, 16),
        "hidden": Bound(1, 4096),
        "levels": Bound(1, 6),
        "split_levels": Bound(1, 5, items=6),
    }
    """The paper's x4 model has 23 blocks of 64 channels, K = 16 and 3 levels; x8 models have 4 levels."""

    def __init__(
        self,
        rrdb_blocks: int = 23,
        rrdb_channels: int = 64,
        growth: int = 32,
        feature_blocks: Sequence[int] = (1, 8, 15, 22),
        steps: int = 16,
        unconditional_steps: int = 2,
        hidden: int = 64,
        levels: int = 3,
        split_levels: Sequence[int] = (1,),
    ) -> None:
        super().__init__()
        if levels < 1:
            raise TypeError("levels must be at least 1")
        if any(not 0 <= index < rrdb_blocks for index in feature_blocks) or len(set(feature_blocks)) != len(
            feature_blocks
        ):
            raise TypeError(f"feature_blocks must be distinct RRDB block indices in [0, {rrdb_blocks})")
        if any(not 1 <= level < levels for level in split_levels):
            raise TypeError(f"split_levels must be level numbers in [1, {levels - 1}] (the last level cannot split)")
        self.conditioner = SRFlowConditioner(rrdb_channels, rrdb_blocks, growth, feature_blocks)
        self.flow_levels = nn.ModuleList()
        channels = 3
        for level in range(1, levels + 1):
            flow_level = FlowLevel(
                channels, self.conditioner.out_channels, hidden, steps, unconditional_steps, level in split_levels
            )
            self.flow_levels.append(flow_level)
            channels = flow_level.out_channels
        self.size_multiple = 2 ** max(levels - 2, 0)

    def encode(self, lr: torch.Tensor) -> SRFlowFeatures:
        """LR (B, 3, h, w) in [0, 1] -> the conditioning features of every level (padding odd sizes)."""
        height, width = int(lr.shape[-2]), int(lr.shape[-1])
        multiple = self.size_multiple
        padded = (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)
        lr = pad_bottom_right(lr, padded[0] - height, padded[1] - width)
        conditions = self.conditioner(channels_last(lr), len(self.flow_levels))
        return SRFlowFeatures(conditions=conditions, lr_size=(height, width), padded_size=padded)

    def latent_shapes(self, features: SRFlowFeatures) -> list[tuple[int, int, int]]:
        """(C, H, W) of each latent, in :meth:`sample`'s order."""
        height, width = SCALE * features.padded_size[0], SCALE * features.padded_size[1]
        channels = 3
        shapes = []
        for flow_level in self.flow_levels:
            channels, height, width = 4 * channels, height // 2, width // 2
            if flow_level.split is not None:
                shapes.append((flow_level.split.split, height, width))
                channels = flow_level.split.kept
        return [*shapes, (channels, height, width)]

    def random_latents(
        self, features: SRFlowFeatures, temperature: float, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """``temperature * N(0, I)`` for every latent, drawn in :meth:`latent_shapes` order."""
        reference = features.conditions[0]
        batch = reference.shape[0]
        return [
            temperature
            * standard_normal((batch, *shape), device=reference.device, dtype=reference.dtype, generator=generator)
            for shape in self.latent_shapes(features)
        ]

    def _padded_hr(self, hr: torch.Tensor, features: SRFlowFeatures) -> torch.Tensor:
        expected = (SCALE * features.lr_size[0], SCALE * features.lr_size[1])
        if tuple(hr.shape[-2:]) != expected:
            raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not {SCALE}x the LR size {features.lr_size}")
        padded = (SCALE * features.padded_size[0], SCALE * features.padded_size[1])
        return pad_bottom_right(hr, padded[0] - expected[0], padded[1] - expected[1])

    def log_prob(self, hr: torch.Tensor, features: SRFlowFeatures) -> SRFlowLogProb:
        """HR (B, 3, 4h, 4w) in [0, 1] -> log p(HR | LR) in nats per image (continuous density) and its latents."""
        x = channels_last(self._padded_hr(hr, features))
        logdet = x.new_zeros(x.shape[0])
        latents = []
        for flow_level, cond in zip(self.flow_levels, features.conditions):
            x, level_logdet, eps = flow_level(x, cond)
            logdet = logdet + level_logdet
            if eps is not None:
                latents.append(eps)
        latents.append(x)
        return SRFlowLogProb(logdet + gaussian_log_density(x), latents)

    def nll_bits_per_pixel(
        self,
        hr: torch.Tensor,
        lr: torch.Tensor,
        dequantise: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean NLL of HR given LR in bits per HR pixel position (a scalar; the training objective).

        With ``dequantise``, HR + U(-1/64, 1/64) (noise of width 1/32, SRFlow's ``quant: 32``) is scored
        as a discrete image in bins of width 1/32: ``-log p(HR + u) + D ln 32`` with D = 3 H W, the number
        of dimensions. (The original code adds ``ln 32`` only H W times, so its figures are 2 log2(32) = 10
        bits per pixel lower for the same model.) Without it, the continuous density's NLL of HR.
        """
        features = self.encode(lr)
        height, width = SCALE * features.padded_size[0], SCALE * features.padded_size[1]
        log_p_offset = 0.0
        if dequantise:
            source = generator.device if generator is not None else hr.device
            noise = torch.rand(hr.shape, generator=generator, device=source, dtype=hr.dtype).to(hr.device)
            hr = hr + (noise - 0.5) / DEQUANTISATION_BINS
            log_p_offset = -3 * height * width * math.log(DEQUANTISATION_BINS)
        log_p = self.log_prob(hr, features).log_prob + log_p_offset
        return (-log_p / (height * width * math.log(2))).mean()

    def sample(
        self,
        features: SRFlowFeatures,
        temperature: float = 0.9,
        generator: torch.Generator | None = None,
        latents: Sequence[torch.Tensor] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> torch.Tensor:
        """HR (B, 3, 4h, 4w) on the [0, 1] scale (not clamped) from ``latents`` (e.g. :meth:`log_prob`'s) or,
        without them, from ``temperature * N(0, I)`` latents drawn by :meth:`random_latents`. ``progress``
        gets the finished fraction after each flow step, each step weighted by its level's area."""
        if latents is None:
            latents = self.random_latents(features, temperature, generator)
        split_latents = [channels_last(z) for z in latents[:-1]]
        x = channels_last(latents[-1])
        areas = [cond.shape[-2] * cond.shape[-1] for cond in features.conditions]
        total = sum(len(level.steps) * area for level, area in zip(self.flow_levels, areas)) or 1
        done = 0
        for flow_level, cond, area in zip(reversed(self.flow_levels), reversed(features.conditions), reversed(areas)):

            def after_step(area: int = area) -> None:
                nonlocal done
                done += area
                if progress is not None:
                    progress(done / total)

            eps = split_latents.pop() if flow_level.split is not None else None
            x = flow_level.inverse(x, cond, eps, after_step)
        if progress is not None and done == 0:
            progress(1.0)  # a flow without steps
        height, width = features.lr_size
        return x[..., : SCALE * height, : SCALE * width]

    def forward(
        self, lr: torch.Tensor, temperature: float = 0.9, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """LR (B, 3, h, w) in [0, 1] -> a sampled HR (B, 3, 4h, 4w) on the [0, 1] scale."""
        return self.sample(self.encode(lr), temperature, generator)
