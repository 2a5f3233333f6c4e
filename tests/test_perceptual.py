"""The perceptual losses of prior training: L1 of VGG's deepest features, or LPIPS on VGG16."""

from __future__ import annotations

import pytest
import torch

from flowsr_cli.errors import UsageError
from flowsr_cli.train.perceptual import VGGPerceptualLoss
from flowsr_cli.train.recipe import load_recipe
from tests.conftest import SHARED


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A textured target, its blurred copy and a copy with faint noise (in [-1, 1])."""
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2, count_include_pad=False)
    noisy = (target + 0.02 * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
    return target, blurred, noisy


@pytest.mark.parametrize("kind", ["deep", "lpips-vgg"])
def test_both_losses_are_zero_on_the_target_and_rank_blur_above_faint_noise(
    kind: str, images: tuple[torch.Tensor, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    loss = VGGPerceptualLoss(torch.device("cpu"), kind)
    target, blurred, noisy = images
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(blurred, target) > 2 * loss(noisy, target) > 0


def test_lpips_vgg_is_frozen_and_its_gradients_reach_the_prediction(
    images: tuple[torch.Tensor, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    loss = VGGPerceptualLoss(torch.device("cpu"), "lpips-vgg")
    assert not any(parameter.requires_grad for parameter in loss.parameters())
    target, blurred, _ = images
    prediction = blurred.clone().requires_grad_(True)
    loss(prediction, target).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


def test_recipe_names_the_perceptual_losses() -> None:
    assert load_recipe(None, {}).perceptual_loss == "deep"
    assert load_recipe(None, {"perceptual_loss": "lpips-vgg"}).perceptual_loss == "lpips-vgg"
    with pytest.raises(UsageError, match="perceptual_loss must be deep or lpips-vgg"):
        load_recipe(None, {"perceptual_loss": "lpips"})
