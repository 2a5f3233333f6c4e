"""Removing a patch model's grid: an added pattern of the patch period goes, ramps and other periods stay,
and a band starting on the patch grid is filtered like the whole image away from its cut edges."""

from __future__ import annotations

import math

import pytest
import torch

from flowsr_cli.engine.degrid import degrid_reach, remove_grid
from flowsr_cli.engine.pipeline import rgb_tensor
from flowsr_cli.io.reading import read_image
from tests.conftest import SHARED

INSIDE = (slice(None), slice(None), slice(40, -40), slice(40, -40))
"""Pixels far enough from the borders that replicated padding plays no part."""


def waves(height: int, width: int, period: float, levels: float) -> torch.Tensor:
    """A cross-hatch of cosines along rows and columns, ``levels`` of 255 each, as (1, 3, H, W)."""
    rows, columns = torch.arange(height)[:, None], torch.arange(width)[None]
    pattern = torch.cos(2 * math.pi * rows / period) + torch.cos(2 * math.pi * columns / period)
    return (levels / 255 * pattern).expand(1, 3, height, width)


def ramp(height: int, width: int) -> torch.Tensor:
    rows, columns = torch.arange(height)[:, None], torch.arange(width)[None]
    return (0.2 + 0.004 * columns + 0.002 * rows).expand(1, 3, height, width).float()


def test_a_pattern_of_the_patch_period_is_removed_and_a_ramp_kept() -> None:
    base = ramp(150, 153)
    assert torch.allclose(remove_grid(base, 3)[INSIDE], base[INSIDE], atol=1e-6), "a ramp is not a pattern"
    cleaned = remove_grid(base + waves(150, 153, 3, 3.0), 3)
    assert torch.allclose(cleaned[INSIDE], base[INSIDE], atol=1e-6)


def test_other_periods_and_a_photo_are_kept() -> None:
    base = ramp(150, 153)
    other = base + waves(150, 153, 7, 3.0)
    assert (remove_grid(other, 3) - other)[INSIDE].abs().max() < 0.3 / 255
    photo = rgb_tensor(read_image(SHARED / "data/eval/Set5/baby.png"))
    change = (remove_grid(photo, 3) - photo).abs().mean() * 255
    assert 0 < change < 1.0, f"a photo has little at exactly 3 pixels ({change:.2f} levels on average)"


@pytest.mark.parametrize("period", [2, 3])
def test_a_band_on_the_grid_matches_the_whole_image_away_from_its_cuts(period: int) -> None:
    image = torch.rand(1, 3, 120, 40, generator=torch.Generator().manual_seed(period))
    whole = remove_grid(image, period)
    reach = degrid_reach(period)
    start, stop = 10 * period, 30 * period
    low, high = start - reach, stop + reach
    band = remove_grid(image[..., low:high, :], period)
    assert torch.allclose(band[..., start - low : stop - low, :], whole[..., start:stop, :], atol=1e-6)
    near_cut = remove_grid(image[..., start:high, :], period)[..., :period, :]
    assert not torch.allclose(near_cut, whole[..., start : start + period, :], atol=1e-4), "the reach is needed"
