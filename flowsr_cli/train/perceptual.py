"""VGG perceptual losses between a prediction and its target (both ImageNet-normalised first)."""

from __future__ import annotations

import torch
from torch import nn

from flowsr_cli.train.recipe import PERCEPTUAL_LOSSES

_LAYER_TAPS = {"vgg16 conv5_3": (4, 9, 16, 23, 29), "vgg19 conv5_4": (4, 9, 18, 27, 35)}
"""Slice ends of relu1_2, relu2_2, relu3_3/3_4, relu4_3/4_4 and the deepest conv, per network."""


class VGGPerceptualLoss(nn.Module):
    """Frozen VGG19 (up to conv5_4, the paper's) if the user has VGG19's weights, else VGG16 (up to
    conv5_3), from the offline backbone folder (or torchvision's cache)."""

    def __init__(self, device: torch.device, kind: str = "deep") -> None:
        super().__init__()
        from flowsr_cli.backbones import load_perceptual_features

        if kind not in PERCEPTUAL_LOSSES:
            raise ValueError(f"perceptual loss {kind!r}: choose {' or '.join(PERCEPTUAL_LOSSES)}")
        self.features, self.network = load_perceptual_features(device)
        self.taps = _LAYER_TAPS[self.network] if kind == "layers" else (len(self.features),)
        self.kind = kind
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1))

    def embed(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The features at each tap of an image in [-1, 1]."""
        x = ((image + 1) / 2 - self.mean) / self.std
        tapped, start = [], 0
        for end in self.taps:
            x = self.features[start:end](x)
            tapped.append(x)
            start = end
        return tapped

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``prediction`` against ``target``, both in [-1, 1]."""
        with torch.no_grad():
            target_features = self.embed(target)
        predicted = self.embed(prediction)
        if self.kind == "deep":
            return (predicted[0] - target_features[0]).abs().mean()
        return sum(
            (_unit(mine) - _unit(theirs)).square().sum(dim=1).mean()
            for mine, theirs in zip(predicted, target_features, strict=True)
        )


def _unit(features: torch.Tensor) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit length (as LPIPS does before comparing)."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
