"""The learned prior's detail-energy and patch-grid terms (train/detail.py) and their recipe keys."""

from __future__ import annotations

import pytest
import torch

from flowsr_cli.errors import UsageError
from flowsr_cli.train.detail import detail_loss, detail_rms, grid_loss, grid_rms
from flowsr_cli.train.recipe import load_recipe


def test_detail_rms_is_each_windows_root_mean_square() -> None:
    detail = torch.zeros(2, 3, 16, 20)
    detail[0, :, :8, :8] = 0.5
    detail[1, 0, 8:, 8:16] = 0.3
    rms = detail_rms(detail)
    assert rms.shape == (2, 1, 2, 2)
    assert rms[0, 0, 0, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert rms[1, 0, 1, 1].item() == pytest.approx(0.3 / 3**0.5, abs=1e-6)
    assert rms[0, 0, 1, 1].item() == pytest.approx(0.0, abs=1e-3)


def test_detail_loss_ignores_where_the_detail_lies_but_not_how_much_there_is() -> None:
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 32, 32, generator=generator)
    checks = (torch.arange(32).view(1, 32) + torch.arange(32).view(32, 1)) % 2 * 0.2 - 0.1
    target = base + checks
    shifted = base + checks.roll(1, dims=1)
    assert detail_loss(shifted, target, base).item() == pytest.approx(0.0, abs=1e-6)
    assert detail_loss(base, target, base).item() == pytest.approx(0.1, abs=1e-4)
    assert detail_loss(base + checks / 2, target, base).item() == pytest.approx(0.05, abs=1e-4)


def test_detail_loss_gradients_reach_the_output() -> None:
    base = torch.zeros(1, 3, 16, 16)
    target = base + torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    output = (base + 0.01).requires_grad_(True)
    detail_loss(output, target, base).backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_recipe_checks_the_consistency_iterations() -> None:
    assert load_recipe(None, {}).consistency_iterations == 0
    assert load_recipe(None, {"arch": "lp-small", "consistency_iterations": 3}).consistency_iterations == 3
    for bad in (-1, 21):
        with pytest.raises(UsageError, match="consistency_iterations must be 0 to 20"):
            load_recipe(None, {"consistency_iterations": bad})
    with pytest.raises(UsageError, match="are for LINF priors"):
        load_recipe(None, {"arch": "srflow-lp-small", "consistency_iterations": 3})


@pytest.mark.parametrize("key", ["detail_weight", "grid_weight"])
def test_recipe_checks_the_detail_and_grid_weights(key: str) -> None:
    assert getattr(load_recipe(None, {}), key) == 0.0
    assert getattr(load_recipe(None, {"arch": "lp-small", key: 25.0}), key) == 25.0
    with pytest.raises(UsageError, match=f"{key} must be >= 0"):
        load_recipe(None, {key: -1.0})
    with pytest.raises(UsageError, match="detail_weight, grid_weight and consistency_iterations are for LINF priors"):
        load_recipe(None, {"arch": "srflow-lp-small", key: 1.0})


def tiled(block: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """A (C, p, p) block repeated over rows x columns patches: (1, C, rows p, columns p)."""
    return block.repeat(1, rows, columns).unsqueeze(0)


def test_grid_rms_measures_a_pattern_repeating_with_the_patch_grid() -> None:
    block = torch.tensor([[0.3, -0.1, 0.0], [0.1, -0.2, 0.2], [-0.3, 0.1, -0.1]]).expand(3, 3, 3)
    pattern = tiled(block, 16, 16)
    rms = grid_rms(pattern, 3)
    assert rms.shape == (1, 1, 2, 2)
    inside = grid_rms(pattern, 3, window=4)[..., 1:3, 1:3]  # the windows away from the border
    expected = (block - block.mean()).pow(2).mean().sqrt().item()
    assert inside.flatten().tolist() == pytest.approx([expected] * 4, rel=1e-4)
    assert rms.min().item() > 0.8 * expected  # the replicated border costs little


def test_grid_rms_ignores_ramps_and_is_small_for_noise_of_the_same_energy() -> None:
    block = torch.tensor([[0.3, -0.1, 0.0], [0.1, -0.2, 0.2], [-0.3, 0.1, -0.1]]).expand(3, 3, 3)
    pattern = tiled(block, 16, 16)
    energy = pattern.pow(2).mean().sqrt()
    ramp = (torch.arange(48.0).view(1, 1, 1, 48) * 0.01).expand(1, 3, 48, 48)
    noise = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    noise = noise * energy / noise.pow(2).mean().sqrt()
    assert grid_rms(ramp, 3, window=4)[..., 1:3, 1:3].max().item() < 2e-4  # sqrt of the 1e-8 floor: 1e-4
    assert grid_rms(noise, 3).mean().item() < 0.25 * grid_rms(pattern, 3).mean().item()


def test_grid_loss_compares_pattern_strength_and_passes_gradients() -> None:
    block = torch.tensor([[0.3, -0.1, 0.0], [0.1, -0.2, 0.2], [-0.3, 0.1, -0.1]]).expand(3, 3, 3)
    base = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    target = base.clone()
    output = (base + tiled(block, 8, 8)).requires_grad_(True)
    loss = grid_loss(output, target, base, 3)
    assert loss.item() == pytest.approx(grid_rms(tiled(block, 8, 8), 3).mean().item(), rel=1e-3)
    assert grid_loss(target, target, base, 3).item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not a multiple of the patch size 3"):
        grid_rms(torch.zeros(1, 3, 10, 9), 3)
