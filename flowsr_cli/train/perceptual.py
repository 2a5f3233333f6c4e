"""Perceptual losses between a prediction and its target, on frozen ImageNet networks from local files."""

from __future__ import annotations

import torch
from torch import nn

from flowsr_cli.train.recipe import PERCEPTUAL_LOSSES


class VGGPerceptualLoss(nn.Module):
    """``deep``: L1 of frozen VGG19 conv5_4 features (the paper's) if the user has VGG19's weights, else
    of VGG16 conv5_3. ``lpips-vgg``: LPIPS with its VGG16 backbone (calibrated distances at every block)."""

    def __init__(self, device: torch.device, kind: str = "deep") -> None:
        super().__init__()
        from flowsr_cli.backbones import load_lpips, load_perceptual_features

        if kind not in PERCEPTUAL_LOSSES:
            raise ValueError(f"perceptual loss {kind!r}: choose {' or '.join(PERCEPTUAL_LOSSES)}")
        self.kind = kind
        if kind == "lpips-vgg":
            self.lpips = load_lpips("vgg", device)
            self.network = "lpips vgg16"
            return
        self.features, self.network = load_perceptual_features(device)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``prediction`` against ``target``, both in [-1, 1]."""
        if self.kind == "lpips-vgg":
            return self.lpips(prediction, target).mean()

        def embed(image: torch.Tensor) -> torch.Tensor:
            return self.features(((image + 1) / 2 - self.mean) / self.std)

        with torch.no_grad():
            target_features = embed(target)
        return (embed(prediction) - target_features).abs().mean()
