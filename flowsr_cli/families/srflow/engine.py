"""SRFlow as a tiled upscaler (fixed x4): :class:`~flowsr_cli.engine.blended.BlendedUpscaler`'s halo tiles blended
with linear feathers, position-tied noise and guard, with SRFlow's sampling, memory estimate and halos."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from flowsr_cli.engine.blended import BlendedUpscaler, LatentPredictor
from flowsr_cli.engine.upscaler import ProgressCallback
from flowsr_cli.families.registry import EngineOptions
from flowsr_cli.families.srflow.network import SCALE, SRFlow, SRFlowFeatures

DEFAULT_HALO = 16
"""LR pixels of context around each tile (--tile-pad auto). SRFlow's receptive field spans the image, but its
effective reach is short: on a tiny model, 16 pixels keep tiles within 5e-4 of untiled (8: 9e-2, 24: 1e-6)."""


PREDICTOR_HALO = 48
"""LR context (--tile-pad auto) with flowsr's own learned prior (``SRFlowLP.halo``), whose UNets reach
further than the flow: on the bundled srflow-lp (tile 48 on a B100 photo at LR 120x80), 16 pixels stayed
within 6.2e-3 of untiled, 32 within 2.0e-3 and 48 within 8.7e-5."""


class SRFlowPredictor(LatentPredictor, Protocol):
    """A learned prior over SRFlow's latents (an SRFlow-LP model): its frozen flow and its latent prediction."""

    flow: SRFlow


@dataclass
class SRFlowUpscaler(BlendedUpscaler):
    """SRFlow x4 sampled with z = temperature * N(0, I) latents, or with a learned prior's latents, tile by tile."""

    model: SRFlow
    default_halo = DEFAULT_HALO

    def _sample(
        self,
        features: SRFlowFeatures,
        latents: list[torch.Tensor] | None,
        scale: float,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        """SRFlow's sample from the latents multiplied by ``scale`` (its latents come pre-scaled)."""
        if latents is None:
            latents = [features.conditions[0].new_zeros(1, *shape) for shape in self.model.latent_shapes(features)]
        else:
            latents = [latent * scale for latent in latents]
        return self.model.sample(features, latents=latents, progress=progress)

    def _float_features(self, features: SRFlowFeatures) -> SRFlowFeatures:
        """The conditions in float32 (the inverse's dtype)."""
        return replace(features, conditions=[condition.float() for condition in features.conditions])

    def _bytes_per_input_pixel(self) -> float:
        """Peak float32 bytes per LR pixel: the widest RRDB activations, the conditions of all levels (2xLR,
        LR, LR/2), the widest coupling input at the finest level (2xLR, 4 cells per LR pixel), the x4 output."""
        conditioner = self.model.conditioner
        encoder = max(conv.in_channels for conv in conditioner.modules() if isinstance(conv, torch.nn.Conv2d))
        convolutions = [conv for conv in self.model.flow_levels[0].modules() if isinstance(conv, torch.nn.Conv2d)]
        flow = max((max(conv.in_channels, conv.out_channels) for conv in convolutions), default=12)
        conditions = conditioner.out_channels * (4 + 1 + 1 / 4)
        output = SCALE * SCALE * 3 * 3
        return 4.0 * (3 * encoder + conditions + 4 * 3 * flow + output)


def run_srflow(model: SRFlow, options: EngineOptions, predictor: SRFlowPredictor | None = None) -> SRFlowUpscaler:
    """The engine of an SRFlow model: Gaussian latents at the options' temperature, or ``predictor``'s."""
    return SRFlowUpscaler(
        model,
        options.device,
        options.dtype,
        options.temperature,
        options.name,
        tile=options.tile,
        tile_pad=options.tile_pad,
        guard=options.guard,
        notes=options.notes,
        predictor=predictor,
    )


def run_srflow_lp(model: SRFlowPredictor, options: EngineOptions) -> SRFlowUpscaler:
    """The engine of an SRFlow-LP model: its learned prior, or its flow alone under ``--prior gaussian``."""
    return run_srflow(model.flow, options, predictor=None if options.prior == "gaussian" else model)
