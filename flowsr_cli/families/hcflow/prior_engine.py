"""HCFlow-LP as a tiled upscaler: HCFlow's :class:`~flowsr_cli.families.hcflow.engine.HCFlowUpscaler` (halo tiles,
linear feathers, the guard) with the learned prior's latents, or the flow alone under ``--prior gaussian``.

The prior predicts each level's latent inside the flow's inverse (:meth:`HCFlowLP.predict_and_render`), so
predicting the latents already renders the tile: the upscaler keeps that output and hands it back when the
engine asks for the same latents at heat 1, instead of running the inverse a second time. The guard's retries
(other heats, or float32 features) render the latents again through the flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from flowsr_cli.engine.blended import BlendAxis
from flowsr_cli.engine.upscaler import ProgressCallback
from flowsr_cli.families.hcflow.engine import HCFlowUpscaler, run_hcflow
from flowsr_cli.families.hcflow.network import HCFlowFeatures
from flowsr_cli.families.hcflow.prior import HCFlowLP
from flowsr_cli.families.registry import EngineOptions


@dataclass
class HCFlowLPUpscaler(HCFlowUpscaler):
    """HCFlow x4 rendered from an HCFlow-LP model's predicted latents, tile by tile."""

    predictor: HCFlowLP | None = None
    _rendered: tuple[list[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    """The latents last predicted and the output their prediction rendered."""

    def _base_latents(
        self,
        crop: torch.Tensor,
        features: Any,
        row: BlendAxis,
        column: BlendAxis,
        seed: int,
        whole: tuple[int, int],
        dtype: torch.dtype,
    ) -> list[torch.Tensor]:
        """The prior's latents of the crop; the output their prediction rendered is kept for :meth:`_sample`."""
        if self.predictor is None:
            return super()._base_latents(crop, features, row, column, seed, whole, dtype)
        with torch.inference_mode(), self._autocast(dtype):
            latents, output = self.predictor.predict_and_render(features, crop)
        latents = [latent.float() for latent in latents]
        self._rendered = (latents, output.float())
        return latents

    def _sample(
        self,
        features: HCFlowFeatures,
        latents: list[torch.Tensor] | None,
        scale: float,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        """The kept output when asked for the just predicted latents at heat 1; HCFlow's sample otherwise."""
        rendered, self._rendered = self._rendered, None
        if rendered is None or latents is not rendered[0] or scale != 1.0:
            return super()._sample(features, latents, scale, progress)
        if progress is not None:
            progress(1.0)
        return rendered[1]


def run_hcflow_lp(model: HCFlowLP, options: EngineOptions) -> HCFlowUpscaler:
    """The engine of an HCFlow-LP model: its learned prior, or its flow alone under ``--prior gaussian``."""
    if options.prior == "gaussian":
        return run_hcflow(model.flow, options)
    return run_hcflow(model.flow, options, HCFlowLPUpscaler, predictor=model)
