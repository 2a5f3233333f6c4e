"""SRFlow-LP: a frozen SRFlow whose latents come from a learned prior (Tsao et al., CVPR 2024; DESIGN §6).

For an LR image (B, 3, h, w) in [0, 1], following the paper's SRFlow-LP: the frozen flow encodes the
bilinear x4 upsampling of the LR (conditioned on the same LR, no dequantisation noise) into one initial
latent per latent level; each is standardised per pixel across its channels; one :class:`LevelPrior`
per level maps it, with the flow's conditioning tensor of that level, to the latent z_hat; the flow
inverse of the z_hats is the output. The LR is encoded once and its features serve every step.
Images follow SRFlow's conventions (module docstring of :mod:`flowsr_cli.families.srflow.network`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.latent import LATENT_BOUNDS
from flowsr_cli.families.common.level_prior import FrozenFlowPrior, LevelPrior, standardise
from flowsr_cli.families.registry import Bound, make
from flowsr_cli.families.srflow.engine import PREDICTOR_HALO
from flowsr_cli.families.srflow.network import SCALE, SRFlow, SRFlowFeatures


def latent_levels(flow: SRFlow) -> list[tuple[int, int]]:
    """(channels, level index) of each latent of ``flow``, in :meth:`SRFlow.sample`'s order."""
    channels = 3
    levels = []
    for index, flow_level in enumerate(flow.flow_levels):
        channels *= 4
        if flow_level.split is not None:
            levels.append((flow_level.split.split, index))
            channels = flow_level.split.kept
    return [*levels, (channels, len(flow.flow_levels) - 1)]


class SRFlowLP(FrozenFlowPrior):
    """A frozen SRFlow (``flow``, an ``srflow`` spec) and one trainable :class:`LevelPrior` per latent
    level (``latent``: its sizes ``branch_channels``, ``growth``, ``widths``; the paper's by default).

    The flow's parameters never require gradients and it stays in eval mode whatever :meth:`train` is
    asked; gradients still pass through its inverse into the priors. The flow runs in float32 outside
    autocast. No method disables autograd: callers choose ``torch.no_grad``/``inference_mode``.
    """

    scale = SCALE
    flow: SRFlow
    halo = PREDICTOR_HALO
    spec_bounds: ClassVar[Mapping[str, Bound]] = {f"latent.{key}": bound for key, bound in LATENT_BOUNDS.items()}
    spec_parts: ClassVar[tuple[str, ...]] = ("flow",)

    def __init__(self, flow: dict[str, Any], latent: dict[str, Any]) -> None:
        flow_model = make(flow)
        if not isinstance(flow_model, SRFlow):
            raise TypeError(f"flow must be an 'srflow' spec, got {flow.get('name')!r}")
        super().__init__(flow_model)
        layout = latent_levels(flow_model)
        self.levels = [index for _, index in layout]
        cond_channels = flow_model.conditioner.out_channels
        self.priors = nn.ModuleList(LevelPrior(channels, cond_channels, **latent) for channels, _ in layout)
        # Level i's latents are 2^(1-i) x the LR size; a UNet pooling by m there needs LR offsets that are
        # multiples of m * 2^(i-1), so that tiles pool on the same grid as the whole image.
        aligned = [prior.unet.multiple * 2 ** (level - 1) for prior, level in zip(self.priors, self.levels)]
        self.size_multiple = math.lcm(flow_model.size_multiple, *(max(1, int(value)) for value in aligned))
        """LR offsets and sizes on this grid give every level's flow and UNet the whole image's grid."""

    def latents_of(self, features: SRFlowFeatures, hr: torch.Tensor) -> list[torch.Tensor]:
        """The flow's latents of HR images (B, 3, 4h, 4w) in [0, 1] (no dequantisation), in
        :meth:`SRFlow.sample`'s order: z_HR for the true HR."""
        with torch.autocast(hr.device.type, enabled=False):
            return self.flow.log_prob(hr.float(), features).latents

    def initial_latents(self, features: SRFlowFeatures, lr: torch.Tensor) -> list[torch.Tensor]:
        """The standardised latents of the bilinear x4 upsampling of ``lr`` (the LR ``features`` encode)."""
        upsampled = F.interpolate(lr.float(), scale_factor=SCALE, mode="bilinear", align_corners=False)
        return [standardise(z) for z in self.latents_of(features, upsampled)]

    def predict_latents(
        self,
        features: SRFlowFeatures,
        lr: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        whole: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """z_hat for every latent level, in :meth:`SRFlow.sample`'s order (padded sizes, as the flow's). Where
        the crop lies (``origin``, ``whole``) does not matter: the priors pad their own input."""
        z_init = self.initial_latents(features, lr)
        return [prior(z, features.conditions[level]) for prior, level, z in zip(self.priors, self.levels, z_init)]

    def render_latents(self, features: SRFlowFeatures, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """The flow inverse of ``latents``: the output (B, 3, 4h, 4w) on the [0, 1] scale (not clamped)."""
        with torch.autocast(features.conditions[0].device.type, enabled=False):
            return self.flow.sample(features, latents=[z.float() for z in latents])

    def render(self, features: SRFlowFeatures, lr: torch.Tensor) -> torch.Tensor:
        """The output for the LR ``features`` encode: the flow inverse of the predicted latents."""
        return self.render_latents(features, self.predict_latents(features, lr))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """``render(encode(lr), lr)``: LR (B, 3, h, w) in [0, 1] -> output (B, 3, 4h, 4w) on the [0, 1] scale."""
        return self.render(self.encode(lr), lr)
