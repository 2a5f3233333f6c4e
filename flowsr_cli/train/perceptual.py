"""Perceptual losses between a prediction and its target, on frozen ImageNet networks: their weights come from
``backbone_dir``, else torchvision's checkpoint is downloaded once into flowsr's cache
(:mod:`flowsr_cli.eval.backbones`)."""

from __future__ import annotations

import torch
from torch import nn

from flowsr_cli.train.recipe import PERCEPTUAL_LOSSES

TEXTURE_BLOCKS = (2, 3, 4)
"""The VGG blocks whose last ReLU output the texture term compares as Gram matrices (relu2_2, relu3_3 and
relu4_3 on VGG16), as EnhanceNet's texture loss does."""


def gram(features: torch.Tensor) -> torch.Tensor:
    """Each image's channel correlations (B, C, C), averaged over pixels: a texture's statistics with
    its layout removed."""
    flat = features.flatten(2).float()
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


class VGGPerceptualLoss(nn.Module):
    """``deep``: L1 of frozen VGG19 conv5_4 features (the paper's) if the user has VGG19's weights, else
    of VGG16 conv5_3. ``lpips-vgg``: LPIPS with its VGG16 backbone (calibrated distances at every block).

    With ``texture_weight`` > 0 (``deep`` only) the loss adds that weight times a texture term: the L1
    between the Gram matrices of prediction and target at :data:`TEXTURE_BLOCKS`, from the same pass."""

    def __init__(self, device: torch.device, kind: str = "deep", texture_weight: float = 0.0) -> None:
        super().__init__()
        from flowsr_cli.eval.backbones import load_lpips, load_perceptual_features

        if kind not in PERCEPTUAL_LOSSES:
            raise ValueError(f"perceptual loss {kind!r}: choose {' or '.join(PERCEPTUAL_LOSSES)}")
        if texture_weight > 0 and kind != "deep":
            raise ValueError(f"the texture term needs the deep perceptual loss, not {kind!r}")
        self.kind = kind
        self.texture_weight = texture_weight
        if kind == "lpips-vgg":
            self.lpips = load_lpips("vgg", device)
            self.network = "lpips vgg16"
            return
        self.features, self.network = load_perceptual_features(device)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``prediction`` against ``target``, both in [-1, 1]."""
        return self.terms(prediction, target)["perceptual"]

    def terms(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss (``perceptual``) and its unweighted parts: ``vgg`` and, with a texture weight, ``texture``."""
        if self.kind == "lpips-vgg":
            vgg = self.lpips(prediction, target).mean()
            return {"vgg": vgg, "perceptual": vgg}
        with torch.no_grad():
            target_deep, target_blocks = self._embed(target)
        deep, blocks = self._embed(prediction)
        vgg = (deep - target_deep).abs().mean()
        if self.texture_weight == 0:
            return {"vgg": vgg, "perceptual": vgg}
        texture = torch.stack([(gram(a) - gram(b)).abs().mean() for a, b in zip(blocks, target_blocks)]).mean()
        return {"vgg": vgg, "texture": texture, "perceptual": vgg + self.texture_weight * texture}

    def _embed(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The deepest features and, with a texture weight, the outputs of :data:`TEXTURE_BLOCKS`."""
        x = ((image + 1) / 2 - self.mean) / self.std
        blocks: list[torch.Tensor] = []
        block = 1
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                if self.texture_weight > 0 and block in TEXTURE_BLOCKS:
                    blocks.append(x)
                block += 1
            x = layer(x)
        return x, blocks
