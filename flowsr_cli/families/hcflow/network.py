"""HCFlow for SR (Liang et al., ICCV 2021; the original's ``HCFlowNet_SR`` with ``FlowNet_SR_x4``/``_x8``): one
bijection HR <-> (LR, a_1, ..., a_L) whose coarsest output *is* the LR.

Conventions (every method follows them):

* Images are float in [0, 1] (RGB), as the original's datasets give them; nothing rescales them.
* Levels are numbered 0 (finest) to L - 1 (coarsest), as the original numbers ``level{l}_condFlow``. Level l:
  squeeze (2x2 space-to-depth, Glow's channel order) to C = 4 x its input's channels, ``steps[l]`` flow steps
  (actnorm, invertible 1x1, bounded affine coupling), then a split: the first ``kept`` channels (C / 2, or the 3
  LR channels on the coarsest level) go on, the rest ``a_l`` is modelled by level l's conditional flow.
* Conditional flows (coarsest first): level l's condition is ``cat(kept_l, nearest_up(features_j) for j > l)``
  (the features of every coarser level, upsampled by nearest neighbour to level l's size), so the coarsest
  level's condition is the LR itself. Its RRDB features (2 x ``rrdb_channels``) condition ``cond_steps[l]``
  flow steps and a Gaussian prior N(mean, exp(logs)) from a Conv2dZeros of the features.
* Latents are the split-off parts standardised by their priors, ``eps_l = (z_l - mean_l) / exp(logs_l)`` with
  z_l = a_l after its conditional steps, listed coarsest first (the order in which sampling draws them). For an
  h x w LR and L = 2: ``[(B, 21, h, w), (B, 6, 2h, 2w)]``; L = 3: ``[(B, 45, h, w), (B, 12, 2h, 2w), (B, 6, 4h,
  4w)]`` (:meth:`HCFlowSR.latent_shapes`). Under the model they are N(0, I); sampling at heat t uses ``t * eps``
  (the original draws ``torch.normal(0, t)``, which is ``t * randn`` from the same random stream), so heat 0 gives
  the prior means: the deterministic output.
* Sizes: the inverse starts at the LR and only unsqueezes, so any h x w LR works and the HR is exactly
  (2^L h) x (2^L w): no padding is needed (``size_multiple`` = 1). The forward direction takes that HR.
* Likelihood (the original's ``normal_flow_diracLR``): the flow's log-det (steps and conditional steps) plus each
  a_l's prior log-density plus the LR term ``log N(LR; Q(LR^), exp(-6))`` summed over the LR's 3 h w values,
  where LR^ is the flow's coarsest output and Q rounds it, clamped to [0, 1], to 1/255 with a straight-through
  gradient. The a_L condition in this direction is the RRDB features of LR^ (not of the true LR), as in the
  original; they coincide when the model reproduces the LR. The LR term is a narrow Gaussian standing in for a
  Dirac delta: for LR^ = LR it adds 6 - ln(2 pi) / 2 ~ 5.08 nats per LR value, so the "log-likelihood" is not a
  normalised density of the HR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from flowsr_cli.families.common.flow_layers import squeeze2d, standard_normal, unsqueeze2d
from flowsr_cli.families.common.layout import channels_last
from flowsr_cli.families.hcflow.layers import (
    ConditionalFlow,
    HCFlowStep,
    build_levels,
    gaussian_log_likelihood,
    level_condition,
    quantise_8bit,
)
from flowsr_cli.families.registry import Bound

DEQUANTISATION_BINS = 64
"""Training adds U(0, 1) / 64 to the HR (the x4 configs' ``quant: 64``; the CelebA x8 configs use 256)."""
LR_LOG_STD = -6.0
"""The LR term's Gaussian has std exp(-6)."""
CPU_CONFIGS: Mapping[str, Mapping[str, object]] = {
    "k12": {"steps": [6, 6], "cond_steps": [6, 6], "rrdb_blocks": [2, 1], "growth": 16},
    "k8": {"steps": [4, 4], "cond_steps": [4, 4], "rrdb_blocks": [1, 1], "growth": 16, "hidden": 32, "cond_hidden": 32},
}
"""x4 configurations small enough to train on a CPU that keep every part (DESIGN section 9): ``k12`` (K 12, 6
steps after each split, RRDB [2, 1], gc 16) has 3.78 M parameters, ``k8`` (K 8, [4, 4], RRDB [1, 1], gc 16,
hidden 32) 2.14 M; the paper's x4 default has 23.2 M (20.3 M of them in the RRDB extractors)."""


@dataclass
class HCFlowFeatures:
    """What HCFlow computes once per LR image and reuses for every sample."""

    lr: torch.Tensor
    """The LR (B, 3, h, w) in [0, 1]: the flow's coarsest output, where sampling starts."""
    condition: torch.Tensor
    """RRDB features of the LR (B, 2 rrdb_channels, h, w): the coarsest conditional flow's condition."""


class HCFlowLatents(NamedTuple):
    """Result of :meth:`HCFlowSR.to_latents`: the forward direction of the bijection."""

    lr_hat: torch.Tensor
    """LR^, the flow's coarsest output (B, 3, h, w), not quantised."""
    latents: list[torch.Tensor]
    """The standardised latents, in :meth:`HCFlowSR.sample`'s order (coarsest first)."""
    log_density: torch.Tensor
    """log|det| of every flow step plus each split-off part's prior log-density, in nats per image (B,)."""


class HCFlowLogProb(NamedTuple):
    """Result of :meth:`HCFlowSR.log_prob`."""

    log_prob: torch.Tensor
    """The original's log-likelihood of HR given LR in nats per image (B,), LR term included (module docstring)."""
    latents: list[torch.Tensor]
    """The latents of HR, in :meth:`HCFlowSR.sample`'s order."""


def lr_log_likelihood(lr_hat: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """The LR term ``log N(LR; Q(LR^), exp(-6))`` per image (B,), Q quantising with a straight-through gradient."""
    quantised = quantise_8bit(lr_hat)
    return gaussian_log_likelihood(lr, torch.full_like(lr, LR_LOG_STD), quantised)


class HCFlowLevel(nn.Module):
    """One level: (squeeze,) ``steps`` unconditional flow steps, then the split whose part ``cond_flow`` models."""

    def __init__(self, channels: int, kept: int, steps: int, hidden: int, cond_flow: ConditionalFlow) -> None:
        super().__init__()
        self.kept = kept
        self.split = channels - kept
        self.steps = nn.ModuleList(HCFlowStep(channels, 0, hidden) for _ in range(steps))
        self.cond_flow = cond_flow

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input (B, C/4, 2H, 2W) -> (kept part, split-off part a, log-det per sample)."""
        x = squeeze2d(x)
        logdet = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, step_logdet = step(x)
            logdet = logdet + step_logdet
        return x[:, : self.kept], x[:, self.kept :], logdet

    def inverse(
        self, kept: torch.Tensor, a: torch.Tensor, step_done: Callable[[float], None] | None = None
    ) -> torch.Tensor:
        """(kept part, split-off part) -> the level's input; ``step_done`` gets the share of its steps done."""
        x = torch.cat([kept, a], dim=1)
        for index, step in enumerate(reversed(self.steps)):
            x = step.inverse(x)
            if step_done is not None:
                step_done((index + 1) / len(self.steps))
        return unsqueeze2d(x)


class HCFlowSR(nn.Module):
    """HCFlow SR x 2^levels (paper default: x4, 23.2 M parameters); conventions in the module docstring.

    Spec arguments (the original's config names in brackets): ``levels`` [L]; ``steps`` per level, the
    unconditional flow steps [K - after_flowstep]; ``cond_steps`` per level, the conditional flow's steps
    [splitOff.after_flowstep]; ``hidden`` [hidden_channels] and ``cond_hidden`` [splitOff.hidden_channels], the
    coupling networks' widths; ``rrdb_blocks`` [RRDB_nb], the blocks of the two RRDB trunks of every level's
    feature extractor; ``rrdb_channels`` [RRDB_nf]; ``growth`` [RRDB_gc]. The CelebA x8 model is
    ``levels=3, steps=[13]*3, cond_steps=[13]*3, rrdb_blocks=[5, 5]``; CPU-sized x4 configs: :data:`CPU_CONFIGS`.

    API:

    * ``encode(lr) -> HCFlowFeatures``: LR (B, 3, h, w) in [0, 1] -> what every sample reuses.
    * ``latent_shapes(features)`` -> (C, H, W) of each latent, coarsest first; ``random_latents(features,
      generator)`` draws them from N(0, I) in that order.
    * ``sample(features, heat, generator=None, latents=None) -> HR`` (B, 3, 2^L h, 2^L w) on the [0, 1] scale,
      not clamped; ``latents`` are N(0, I)-scale and multiplied by ``heat``.
    * ``to_latents(hr) -> HCFlowLatents(lr_hat, latents, log_density)``: the forward direction; ``sample(
      encode(lr_hat), 1.0, latents=latents)`` returns ``hr``.
    * ``log_prob(hr, features) -> HCFlowLogProb(log_prob, latents)``; ``nll_bits_per_pixel(hr, lr)``: the
      training objective.

    ``scale`` is 2^levels on an instance (the class attribute is the paper's 4; :meth:`scale_of` gives a spec's).
    """

    scale = 4
    default_temperature = 0.9
    """The heat flowsr samples at unless told: the original's for general SR (its DF2K x4 configs; 0.8 for faces)."""
    size_multiple = 1
    spec_bounds: ClassVar[Mapping[str, Bound]] = {
        "levels": Bound(1, 4),
        "steps": Bound(0, 64, items=4),
        "cond_steps": Bound(0, 64, items=4),
        "hidden": Bound(1, 4096),
        "cond_hidden": Bound(1, 4096),
        "rrdb_blocks": Bound(0, 64, items=2),
        "rrdb_channels": Bound(1, 1024),
        "growth": Bound(1, 1024),
    }
    """The original builds L = 2 (x4) and L = 3 (x8) with 13 + 13 steps per level, 64-wide couplings and RRDB
    extractors of [7, 7] (x4) or [5, 5] (x8) blocks of 64 channels, growth 32."""

    @classmethod
    def scale_of(cls, args: Mapping[str, object]) -> int:
        """The scale of the model a spec's ``args`` build: 2^levels (the class's 4 without ``levels``)."""
        levels = args.get("levels")
        return 2**levels if isinstance(levels, int) else cls.scale

    def __init__(
        self,
        levels: int = 2,
        steps: Sequence[int] = (13, 13),
        cond_steps: Sequence[int] = (13, 13),
        hidden: int = 64,
        cond_hidden: int = 64,
        rrdb_blocks: Sequence[int] = (7, 7),
        rrdb_channels: int = 64,
        growth: int = 32,
    ) -> None:
        super().__init__()
        self.scale = 2**levels
        feature_channels = 2 * rrdb_channels

        def make_level(level: int, channels: int, kept: int) -> HCFlowLevel:
            cond_flow = ConditionalFlow(
                channels - kept,
                kept + feature_channels * (levels - 1 - level),
                cond_steps[level],
                cond_hidden,
                (rrdb_blocks[0], rrdb_blocks[1]),
                rrdb_channels,
                growth,
            )
            return HCFlowLevel(channels, kept, steps[level], hidden, cond_flow)

        self.flow_levels = build_levels(levels, steps, cond_steps, rrdb_blocks, make_level)

    def encode(self, lr: torch.Tensor) -> HCFlowFeatures:
        """LR (B, 3, h, w) in [0, 1] -> the LR and its RRDB features (the coarsest level's condition)."""
        lr = channels_last(lr)
        return HCFlowFeatures(lr=lr, condition=self.flow_levels[-1].cond_flow.features(lr))

    def latent_shapes(self, features: HCFlowFeatures) -> list[tuple[int, int, int]]:
        """(C, H, W) of each latent, coarsest first (:meth:`sample`'s order)."""
        height, width = features.lr.shape[-2:]
        return [
            (level.split, height << index, width << index) for index, level in enumerate(reversed(self.flow_levels))
        ]

    def random_latents(self, features: HCFlowFeatures, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """N(0, I) latents drawn from ``generator`` (torch's global one if None) in :meth:`latent_shapes` order:
        with the same random state, the draws the original makes for ``eps_std`` = 1."""
        lr = features.lr
        return [
            standard_normal((lr.shape[0], *shape), device=lr.device, dtype=lr.dtype, generator=generator)
            for shape in self.latent_shapes(features)
        ]

    def sample(
        self,
        features: HCFlowFeatures,
        heat: float = 0.9,
        generator: torch.Generator | None = None,
        latents: Sequence[torch.Tensor] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> torch.Tensor:
        """HR (B, 3, 2^L h, 2^L w) on the [0, 1] scale, not clamped, from ``heat * latents`` (N(0, I)-scale
        ``latents``, drawn by :meth:`random_latents` if None; heat 0: the prior means, the deterministic output).
        ``progress`` gets the share done after every flow step, each level weighted by its pixels (4^depth)."""
        if latents is None:
            latents = self.random_latents(features, generator)
        if len(latents) != len(self.flow_levels):
            raise ValueError(f"HCFlow needs {len(self.flow_levels)} latents, got {len(latents)}")
        total = sum(4**depth for depth in range(len(latents)))
        x = features.lr
        coarser: list[torch.Tensor] = []
        for depth, (level, eps) in enumerate(zip(reversed(self.flow_levels), latents)):
            condition = level.cond_flow.features(level_condition(x, coarser)) if coarser else features.condition
            done_before = sum(4**coarse for coarse in range(depth))
            step_done = (
                None if progress is None else lambda share, d=depth, b=done_before: progress((b + 4**d * share) / total)
            )
            x = level.inverse(x, level.cond_flow.inverse(heat * channels_last(eps), condition), step_done)
            coarser.insert(0, condition)
        return x

    def to_latents(self, hr: torch.Tensor) -> HCFlowLatents:
        """HR (B, 3, 2^L h, 2^L w) -> (LR^, latents coarsest first, log-det + the parts' prior log-densities)."""
        if hr.shape[-2] % self.scale or hr.shape[-1] % self.scale:
            raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not a multiple of the scale {self.scale}")
        x = channels_last(hr)
        log_density = hr.new_zeros(hr.shape[0])
        kept_parts, split_parts = [], []
        for level in self.flow_levels:
            x, a, logdet = level(x)
            log_density = log_density + logdet
            kept_parts.append(x)
            split_parts.append(a)
        latents: list[torch.Tensor] = []
        coarser: list[torch.Tensor] = []
        for level, kept, a in zip(reversed(self.flow_levels), reversed(kept_parts), reversed(split_parts)):
            condition = level.cond_flow.features(level_condition(kept, coarser))
            eps, logdet = level.cond_flow(a, condition)
            log_density = log_density + logdet
            latents.append(eps)
            coarser.insert(0, condition)
        return HCFlowLatents(x, latents, log_density)

    def _log_likelihood(self, hr: torch.Tensor, lr: torch.Tensor) -> HCFlowLogProb:
        expected = (self.scale * lr.shape[-2], self.scale * lr.shape[-1])
        if tuple(hr.shape[-2:]) != expected:
            raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not {self.scale}x the LR size {tuple(lr.shape[-2:])}")
        lr_hat, latents, log_density = self.to_latents(hr)
        return HCFlowLogProb(log_density + lr_log_likelihood(lr_hat, lr), latents)

    def log_prob(self, hr: torch.Tensor, features: HCFlowFeatures) -> HCFlowLogProb:
        """HR (B, 3, 2^L h, 2^L w) in [0, 1] -> the original's log-likelihood given the LR in nats per image (the
        flow's log-density and the LR term, no dequantisation offset) and HR's latents."""
        return self._log_likelihood(hr, features.lr)

    def nll_bits_per_pixel(
        self,
        hr: torch.Tensor,
        lr: torch.Tensor,
        dequantise: bool = True,
        generator: torch.Generator | None = None,
        bins: int = DEQUANTISATION_BINS,
    ) -> torch.Tensor:
        """The original's training NLL (a scalar): ``-(log-likelihood) / (ln 2 * H * W)``, averaged over the batch.

        With ``dequantise``, as the original: HR + U(0, 1) / bins (not centred) and a log-det offset of
        ``-ln(bins)`` per HR pixel position, i.e. H W ln(bins) where a density over 3 H W dimensions in bins of
        width 1/bins needs 3 H W ln(bins): the figures are 2 log2(bins) = 12 bits per pixel (bins 64) below
        the discrete NLL. Without it, the continuous density's NLL of HR (no noise, no offset).
        """
        pixels = hr.shape[-2] * hr.shape[-1]
        offset = 0.0
        if dequantise:
            source = generator.device if generator is not None else hr.device
            noise = torch.rand(hr.shape, generator=generator, device=source, dtype=hr.dtype).to(hr.device)
            hr = hr + noise / bins
            offset = -math.log(bins) * pixels
        log_p = self._log_likelihood(hr, lr).log_prob + offset
        return (-log_p / (math.log(2.0) * pixels)).mean()

    def forward(self, lr: torch.Tensor, heat: float = 0.9, generator: torch.Generator | None = None) -> torch.Tensor:
        """LR (B, 3, h, w) in [0, 1] -> a sampled HR (B, 3, 2^L h, 2^L w) on the [0, 1] scale."""
        return self.sample(self.encode(lr), heat, generator)
