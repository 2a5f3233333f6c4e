"""Validation of a rescaler during `train rescale`: the round trip the original validates (HR -> the model's LR,
stored as 8 bits -> the inverse at heat 1), scored as `eval` scores SR, and the model's LR against the bicubic LR
(how faithful a thumbnail it is)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from flowsr_cli.eval.metrics import make_lr, psnr, psnr_y, ssim_y
from flowsr_cli.families.hcflow.layers import quantise_8bit
from flowsr_cli.families.hcflow.rescaling import HCFlowRescaler

VALIDATION_SEED = 0
"""Seed of the inverse's latents, the same at every validation so that the numbers compare across steps."""


class RoundTrip(NamedTuple):
    """What a rescaler makes of one HR."""

    lr: torch.Tensor
    """The model's LR as an 8-bit file stores it (clamped, multiples of 1/255)."""
    hr: torch.Tensor
    """The HR restored from that LR, clamped to [0, 1]."""


@torch.no_grad()
def round_trip(model: HCFlowRescaler, hr: torch.Tensor, heat: float, generator: torch.Generator) -> RoundTrip:
    """HR (B, 3, H, W) in [0, 1], sides multiples of the scale -> the model's 8-bit LR and the HR restored from it at
    ``heat`` (latents drawn from ``generator``)."""
    lr = quantise_8bit(model.downscale(hr))
    return RoundTrip(lr, model.upscale(lr, heat, generator=generator).clamp(0.0, 1.0))


@torch.no_grad()
def rescale_metrics(model: HCFlowRescaler, hr: torch.Tensor) -> dict[str, float]:
    """One HR (1, 3, H, W) in [0, 1], cropped to a multiple of the scale: PSNR-Y and SSIM (on Y, the scale as
    border) of the round trip at the model's heat, and the PSNR (RGB) of its LR against the 8-bit bicubic LR."""
    scale = model.scale
    hr, bicubic = make_lr(hr, scale)
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    lr, restored = round_trip(model, hr, model.default_temperature, generator)
    return {
        "psnr_y": float(psnr_y(restored, hr, scale)),
        "ssim": float(ssim_y(restored, hr, scale)),
        "lr_bicubic_psnr": float(psnr(lr, bicubic)),
    }


class RescaleValidation:
    """The mean :func:`rescale_metrics` of ``images`` (each (1, 3, H, W) in [0, 1]) for ``model`` as it is now."""

    def __init__(self, model: HCFlowRescaler, images: Sequence[torch.Tensor], device: torch.device) -> None:
        if not images:
            raise ValueError("validation needs at least one image")
        self.model = model
        self.images = list(images)
        self.device = device

    def __call__(self) -> dict[str, float]:
        """The metrics averaged over the images."""
        scores = [rescale_metrics(self.model, image.to(self.device)) for image in self.images]
        return {name: sum(score[name] for score in scores) / len(scores) for name in scores[0]}
