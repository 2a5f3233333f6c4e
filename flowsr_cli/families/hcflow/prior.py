"""HCFlow-LP: a frozen HCFlow whose latents come from a learned prior (the LP latent module of Tsao et al., CVPR
2024, on the hierarchical flow of Liang et al., ICCV 2021; DESIGN sections 5, 6 and 9).

Images follow HCFlow's conventions (module docstring of :mod:`flowsr_cli.families.hcflow.network`): [0, 1],
latents coarsest first on the N(0, I) scale. For an LR image (B, 3, h, w):

1. Initial latents: the frozen flow's latents of the bilinear x4 upsampling of the LR (:meth:`HCFlowSR.to_latents`,
   no dequantisation noise), each standardised per pixel across its channels, as SRFlow-LP does.
2. Prediction during the inverse: HCFlow samples coarsest level first, and a finer level's condition is computed
   from the coarser levels' inverse (its kept part and their features). So each level's z_hat is predicted
   inside the inverse, by one :class:`~flowsr_cli.families.common.level_prior.LevelPrior` per level, from the
   level's standardised initial latent and the condition that level's inverse really reads: the coarsest level's
   RRDB features of the LR, and on each finer level its conditional flow's features of its condition (built from
   the already predicted coarser output). Predicted latents and rendered output therefore agree:
   ``flow.sample(features, 1.0, latents=predict_latents(...))`` is the output :meth:`HCFlowLP.render` gives.
3. The z_hats are rendered at heat 1 (they are the latents themselves, in the flow's N(0, I) scale).

Each head starts at zero, so an untrained prior predicts z_hat = 0 on every level: the flow's heat-0 output.
The flow's parameters never require gradients and it stays in eval mode; gradients flow through its inverse
(and through the finer levels' feature extractors) into the priors. The flow runs in float32 outside autocast.
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
from flowsr_cli.families.hcflow.layers import level_condition
from flowsr_cli.families.hcflow.network import HCFlowFeatures, HCFlowSR
from flowsr_cli.families.registry import Bound, make

PREDICTOR_HALO = 32
"""LR context (--tile-pad auto) with the learned prior (``HCFlowLP.halo``), above the flow's 16: the UNets reach
further. Measured as max |tiled - untiled| with 16-pixel tiles on a photo at LR 40x56, on the tests' tiny flow with
priors whose heads were randomised to latents of std 0.5 (outputs 0.6-1.0 away from heat 0), for halos 0 / 8 /
16 / 24 / 32 / 48: UNets [8, 16] 0.19 / 6.5e-3 / 3.8e-4 / 4.8e-7 / 3.6e-7 / 1.2e-7; the CPU-sized ``hcflow-lp-small``
sizes ([32, 64, 128, 128], grid 8, so 0 acts as 8) 1.4e-2 / 1.4e-2 / 3.6e-4 / 1.4e-5 / 1.0e-6 / 2.4e-7. 32 is
where both reach float noise; a trained prior may reach further (SRFlow-LP's needed 48): re-measure on one."""


class HCFlowLP(FrozenFlowPrior):
    """A frozen HCFlow (``flow``, an ``hcflow`` spec) and one trainable :class:`LevelPrior` per latent level,
    coarsest first (``latent``: its sizes ``branch_channels``, ``growth``, ``widths``; the paper's by default).

    No method disables autograd: callers choose ``torch.no_grad``/``inference_mode``."""

    flow: HCFlowSR
    halo = PREDICTOR_HALO
    spec_bounds: ClassVar[Mapping[str, Bound]] = {f"latent.{key}": bound for key, bound in LATENT_BOUNDS.items()}
    spec_parts: ClassVar[tuple[str, ...]] = ("flow",)

    def __init__(self, flow: dict[str, Any], latent: dict[str, Any]) -> None:
        flow_model = make(flow)
        if not isinstance(flow_model, HCFlowSR):
            raise TypeError(f"flow must be an 'hcflow' spec, got {flow.get('name')!r}")
        super().__init__(flow_model)
        self.scale = flow_model.scale
        self.priors = nn.ModuleList(
            LevelPrior(level.split, level.cond_flow.feature_channels, **latent)
            for level in reversed(flow_model.flow_levels)
        )
        # The depth-d latent (coarsest: 0) is 2^d x the LR size; a UNet pooling by m there needs LR offsets that
        # are multiples of m / 2^d, so that tiles pool on the same grid as the whole image.
        aligned = [max(1, prior.unet.multiple >> depth) for depth, prior in enumerate(self.priors)]
        self.size_multiple = math.lcm(flow_model.size_multiple, *aligned)
        """LR offsets and sizes on this grid give every level's UNet the whole image's grid."""

    def latent_shapes(self, features: HCFlowFeatures) -> list[tuple[int, int, int]]:
        """(C, H, W) of each latent, coarsest first (the flow's)."""
        return self.flow.latent_shapes(features)

    def latents_of(self, hr: torch.Tensor) -> list[torch.Tensor]:
        """The flow's latents of HR images (B, 3, 4h, 4w) in [0, 1] (no dequantisation), coarsest first: z_HR."""
        with torch.autocast(hr.device.type, enabled=False):
            return self.flow.to_latents(hr.float()).latents

    def initial_latents(self, lr: torch.Tensor) -> list[torch.Tensor]:
        """The standardised latents of the bilinear upsampling of ``lr`` by the flow's scale."""
        upsampled = F.interpolate(lr.float(), scale_factor=self.scale, mode="bilinear", align_corners=False)
        return [standardise(z) for z in self.latents_of(upsampled)]

    def predict_and_render(self, features: HCFlowFeatures, lr: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The flow's inverse, coarsest level first, each level's latent predicted from its own condition:
        (z_hat per level, output (B, 3, 4h, 4w) on the [0, 1] scale, not clamped)."""
        z_init = self.initial_latents(lr)
        with torch.autocast(lr.device.type, enabled=False):
            x = features.lr.float()
            coarser: list[torch.Tensor] = []
            latents: list[torch.Tensor] = []
            for level, prior, z in zip(reversed(self.flow.flow_levels), self.priors, z_init):
                condition = (
                    level.cond_flow.features(level_condition(x, coarser)) if coarser else features.condition.float()
                )
                latents.append(prior(z, condition))
                x = level.inverse(x, level.cond_flow.inverse(latents[-1], condition))
                coarser.insert(0, condition)
        return latents, x

    def predict_latents(
        self,
        features: HCFlowFeatures,
        lr: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        whole: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """z_hat for every latent level, coarsest first, for the LR ``features`` encode. Where the crop lies
        (``origin``, ``whole``) does not matter: the priors pad their own input."""
        return self.predict_and_render(features, lr)[0]

    def render_latents(self, features: HCFlowFeatures, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """The flow inverse of ``latents`` at heat 1: the output (B, 3, 4h, 4w) on the [0, 1] scale (not clamped)."""
        with torch.autocast(features.lr.device.type, enabled=False):
            return self.flow.sample(features, 1.0, latents=[z.float() for z in latents])

    def render(self, features: HCFlowFeatures, lr: torch.Tensor) -> torch.Tensor:
        """The output for the LR ``features`` encode: the flow inverse of the predicted latents (one pass)."""
        return self.predict_and_render(features, lr)[1]

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """``render(encode(lr), lr)``: LR (B, 3, h, w) in [0, 1] -> output (B, 3, 4h, 4w) on the [0, 1] scale."""
        return self.render(self.encode(lr), lr)
