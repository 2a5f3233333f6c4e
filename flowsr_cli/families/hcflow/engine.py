"""HCFlow as a tiled upscaler (fixed x 2^levels): :class:`~flowsr_cli.engine.blended.BlendedUpscaler`'s halo tiles
blended with linear feathers, position-tied noise and guard, with HCFlow's heat-scaled sampling.

``--temperature`` is HCFlow's heat (0.9 unless told: :attr:`HCFlowSR.default_temperature`): the latents are
N(0, I) draws (coarsest level first) that :meth:`HCFlowSR.sample` multiplies by it, so temperature 0 gives the
prior means exactly. Progress moves tile by tile (each tile reports when its sample is done). The coarsest level's
RRDB features are computed at ``--precision``'s dtype; the finer levels' extractors run inside the flow's inverse,
in float32 like every inverse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from flowsr_cli.engine.blended import BlendedUpscaler
from flowsr_cli.engine.upscaler import ProgressCallback
from flowsr_cli.families.hcflow.network import HCFlowFeatures, HCFlowSR
from flowsr_cli.families.registry import EngineOptions

DEFAULT_HALO = 16
"""LR pixels of context around each tile (--tile-pad auto).

HCFlow's receptive field is wide: each level runs an RRDB extractor (2 + 15 x its blocks convolutions) on the
already sampled coarser output, and every flow step adds two 3x3 convolutions, so for the paper's x4 model
(RRDB [7, 7], 13 + 13 steps per level) an output pixel depends on LR pixels up to about 400 away (265 from the
coarsest level, another 133 from the finest at twice the resolution; x8: about 360). Its effective reach is far
shorter. Measured at heat 0 with 16-pixel tiles on real photos at LR 96x64 (Set14 baboon, B100 img_004), max
|tiled - untiled| for halos 8 / 16 / 24 / 32 / 48:

* an imported original-layout model with tamed random weights (the tests' ``original_hcflow.tamed_original``,
  RRDB [1, 1] of 8 channels; reach 59 LR pixels): 6e-6 / 8e-7 / 7e-7 / 7e-7 / 1e-7;
* the same layout 64 channels wide (K 8, hidden 32): 7e-4 / 2e-6 / 2e-6 / 2e-6 / 1e-6;
* flowsr's tiny test model (Xavier x 0.1 RRDBs, actnorms set on data): 1.4e-3 / 2.3e-6 / 2.4e-7 / 2.1e-7 / 6e-8
  (heat 0.9: 3.1e-3 / 1.4e-5 / 1e-6 / 7e-7 / 2e-7);
* the CPU config ``k8`` with its initial random weights, whose outputs are not image-like (-16 to 14): 2.1 /
  0.16 / 7e-5 / 1e-5 / 1e-6.

16 is where every image-like model reaches float noise (8 is not); re-measure on a trained model, whose RRDBs
may reach further."""


@dataclass
class HCFlowUpscaler(BlendedUpscaler):
    """HCFlow x 2^levels sampled at heat = temperature from N(0, I) latents, tile by tile."""

    model: HCFlowSR
    default_halo = DEFAULT_HALO

    def _sample(
        self,
        features: HCFlowFeatures,
        latents: list[torch.Tensor] | None,
        scale: float,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        """HCFlow's sample at heat ``scale`` (it multiplies the N(0, I)-scale latents itself)."""
        if latents is None:
            latents = [features.lr.new_zeros(1, *shape) for shape in self.model.latent_shapes(features)]
        return self.model.sample(features, scale, latents=latents, progress=progress)

    def _float_features(self, features: HCFlowFeatures) -> HCFlowFeatures:
        """The LR and the coarsest level's RRDB features in float32 (the inverse's dtype)."""
        return replace(features, lr=features.lr.float(), condition=features.condition.float())

    def _bytes_per_input_pixel(self) -> float:
        """Peak float32 bytes per LR pixel: at each level (the k-th coarsest has 4^k cells per LR pixel), four times
        its widest convolution's activations (an RRDB dense block's concatenation and the residuals around it, or
        a coupling's), its condition and the RRDB features of it and of every coarser level; then the output.
        On the paper-size x4 model this gives 22.7 kB, where 21.9 to 25.5 kB were measured (peak RSS, LR 112)."""
        total = 0.0
        for depth, level in enumerate(reversed(self.model.flow_levels)):
            convolutions = [conv for conv in level.modules() if isinstance(conv, torch.nn.Conv2d)]
            widest = max(max(conv.in_channels, conv.out_channels) for conv in convolutions)
            condition = level.cond_flow.conv_first.in_channels
            features = level.cond_flow.feature_channels * (depth + 1)
            total += 4**depth * (4 * widest + condition + features)
        output = self.model.scale**2 * 3 * 3
        return 4.0 * (total + output)


def run_hcflow(
    model: HCFlowSR, options: EngineOptions, upscaler: type[HCFlowUpscaler] = HCFlowUpscaler, **extra: Any
) -> HCFlowUpscaler:
    """The engine of an HCFlow model: N(0, I) latents at heat = the options' temperature (or an ``upscaler``
    subclass built with the ``extra`` fields)."""
    return upscaler(
        model,
        options.device,
        options.dtype,
        options.temperature,
        options.name,
        tile=options.tile,
        tile_pad=options.tile_pad,
        guard=options.guard,
        notes=options.notes,
        **extra,
    )
