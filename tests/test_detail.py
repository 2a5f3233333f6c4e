"""The learned prior's detail-energy term (train/detail.py) and its recipe key."""

from __future__ import annotations

import pytest
import torch

from flowsr_cli.errors import UsageError
from flowsr_cli.train.detail import detail_loss, detail_rms
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


def test_recipe_checks_the_detail_weight() -> None:
    assert load_recipe(None, {}).detail_weight == 0.0
    assert load_recipe(None, {"arch": "lp-small", "detail_weight": 25.0}).detail_weight == 25.0
    with pytest.raises(UsageError, match="detail_weight must be >= 0"):
        load_recipe(None, {"detail_weight": -1.0})
    with pytest.raises(UsageError, match="detail_weight is for LINF priors"):
        load_recipe(None, {"arch": "srflow-lp-small", "detail_weight": 1.0})
