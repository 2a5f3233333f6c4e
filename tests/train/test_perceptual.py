"""The perceptual losses of prior training: L1 of VGG's deepest features (with an optional texture term of
Gram matrices), or LPIPS on VGG16."""

from __future__ import annotations

import pytest
import torch

from flowsr_cli.errors import UsageError
from flowsr_cli.train.perceptual import VGGPerceptualLoss, gram
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


def test_gram_is_the_pixel_averaged_channel_correlation() -> None:
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])
    assert torch.allclose(gram(features), torch.tensor([[[2.5, 0.5], [0.5, 5.0]]]))


def test_the_texture_term_ignores_layout_but_sees_blur(
    images: tuple[torch.Tensor, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A texture moved by half the image keeps its Gram matrices (up to the borders) while its deep
    features change; a blurred copy has lost texture, so its Gram matrices differ."""
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    loss = VGGPerceptualLoss(torch.device("cpu"), "deep", texture_weight=2.0)
    target, blurred, _ = images
    rolled = target.roll(32, dims=-1)
    same, moved, soft = loss.terms(target, target), loss.terms(rolled, target), loss.terms(blurred, target)
    assert same["texture"].item() == pytest.approx(0.0, abs=1e-6)
    assert moved["texture"] < 0.25 * soft["texture"]
    assert moved["vgg"] > 0.2 * soft["vgg"] > 0.1
    assert soft["perceptual"].item() == pytest.approx((soft["vgg"] + 2.0 * soft["texture"]).item())
    assert "texture" not in VGGPerceptualLoss(torch.device("cpu")).terms(blurred, target)

    prediction = blurred.clone().requires_grad_(True)
    loss.terms(prediction, target)["texture"].backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


def test_recipe_checks_the_texture_weight() -> None:
    assert load_recipe(None, {}).texture_weight == 0.0
    assert load_recipe(None, {"texture_weight": 2.0}).texture_weight == 2.0
    with pytest.raises(UsageError, match="texture_weight must be >= 0"):
        load_recipe(None, {"texture_weight": -1.0})
    with pytest.raises(UsageError, match="texture_weight needs perceptual_loss deep"):
        load_recipe(None, {"texture_weight": 1.0, "perceptual_loss": "lpips-vgg"})
