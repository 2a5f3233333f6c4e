"""VGG perceptual loss: L1 between deep VGG features of prediction and target (ImageNet-normalised)."""

from __future__ import annotations

import torch
from torch import nn


class VGGPerceptualLoss(nn.Module):
    """Frozen VGG19 conv5_4 features (the paper's) if the user has VGG19's weights, else VGG16 conv5_3,
    from the offline backbone folder (or torchvision's cache)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        from flowsr_cli.backbones import load_perceptual_features

        self.features, self.network = load_perceptual_features(device)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean L1 distance of the features; both images in [-1, 1]."""

        def embed(image: torch.Tensor) -> torch.Tensor:
            return self.features(((image + 1) / 2 - self.mean) / self.std)

        with torch.no_grad():
            target_features = embed(target)
        return (embed(prediction) - target_features).abs().mean()
