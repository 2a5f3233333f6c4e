"""The consistency projection: it brings an output's MATLAB-bicubic shrink to the input, and a band of rows
projected with its halo is exactly that band of the whole image's projection."""

from __future__ import annotations

import pytest
import torch

from flowsr_cli.engine.pipeline import rgb_tensor
from flowsr_cli.engine.projection import halo_rows, project, project_rows
from flowsr_cli.engine.resize import resize
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.sizing import Size, SizeRequest
from tests.conftest import SHARED

pytestmark = pytest.mark.usefixtures("one_thread")


def shrink_error(sr: torch.Tensor, lr: torch.Tensor) -> float:
    """Mean squared difference between ``sr`` shrunk to ``lr``'s size (the LR-PSNR's bicubic) and ``lr``."""
    return float((resize(sr, (lr.shape[-2], lr.shape[-1])) - lr).pow(2).mean())


def butterfly_crop() -> torch.Tensor:
    """A 24 x 20 crop of Set5's butterfly, (1, 3, 20, 24) in [0, 1]."""
    return rgb_tensor(read_image(SHARED / "data/eval/Set5/butterfly.png"))[..., 100:120, 90:114].contiguous()


@pytest.mark.parametrize("scale", [2, 3.5, 4])
def test_projection_brings_the_shrunk_output_to_the_input(scale: float) -> None:
    lr = butterfly_crop()
    size = SizeRequest(scale=scale).target(Size(lr.shape[-1], lr.shape[-2]))
    noise = 0.1 * torch.randn(1, 3, size.height, size.width, generator=torch.Generator().manual_seed(1))
    bicubic = resize(lr, (size.height, size.width))
    sr = (bicubic + noise).clamp(0, 1)  # an output the input contradicts
    once, thrice = project(sr, lr, iterations=1), project(sr, lr)
    assert shrink_error(once, lr) < shrink_error(sr, lr) / 5
    assert shrink_error(thrice, lr) < shrink_error(once, lr) / 5
    assert shrink_error(thrice, lr) < shrink_error(bicubic, lr) / 1.5, "closer to the input than bicubic is"
    assert thrice.min() >= 0 and thrice.max() <= 1, "clamped to the value range"
    assert (thrice - sr).abs().mean() < noise.abs().mean(), "a correction, not a new image"


def test_a_value_range_other_than_0_1_is_kept() -> None:
    lr = butterfly_crop() * 2 - 1
    sr = (resize(lr, (40, 48)) + 0.3).clamp(-1, 1)
    projected = project(sr, lr, value_range=(-1.0, 1.0))
    assert projected.min() >= -1 and projected.max() <= 1 and projected.min() < 0
    assert shrink_error(projected, lr) < shrink_error(sr, lr) / 10


def test_projection_is_differentiable() -> None:
    lr = butterfly_crop()
    sr = resize(lr, (40, 48)).clamp(0.05, 0.95).requires_grad_()
    project(sr, lr).sum().backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0


@pytest.mark.parametrize(("scale", "iterations"), [(2, 3), (3, 3), (3.5, 3), (3.5, 1), (4, 3), (7.2, 3)])
def test_a_band_with_its_halo_equals_that_band_of_the_whole_projection(scale: float, iterations: int) -> None:
    generator = torch.Generator().manual_seed(round(scale * 10))
    lr = torch.rand(1, 3, 43, 7, generator=generator)
    size = SizeRequest(scale=scale).target(Size(7, 43))
    sr = torch.rand(1, 3, size.height, size.width, generator=generator)
    whole = project(sr, lr, iterations)
    halo = halo_rows(size.height, 43, iterations)
    cuts = [0, size.height // 3 + 1, size.height // 2 + 3, size.height]
    assert cuts[1] - halo > 0 or cuts[2] + halo < size.height, "some cut must have a halo inside the image"
    for start, stop in zip(cuts, cuts[1:]):
        low, high = max(0, start - halo), min(size.height, stop + halo)
        window = project_rows(sr[..., low:high, :], lr, size.height, range(low, high), iterations)
        band = window[..., start - low : stop - low, :]
        assert torch.allclose(band, whole[..., start:stop, :], atol=1e-5), (start, stop)


def test_without_its_halo_a_band_differs_near_its_cut() -> None:
    """The band test above is not vacuous: a cut without a halo changes the rows next to it."""
    generator = torch.Generator().manual_seed(3)
    lr = torch.rand(1, 3, 30, 9, generator=generator)
    sr = torch.rand(1, 3, 90, 27, generator=generator)
    whole = project(sr, lr)
    top = project_rows(sr[..., :45, :], lr, 90, range(45))
    assert (top[..., -3:, :] - whole[..., 42:45, :]).abs().max() > 1e-3
    assert torch.allclose(top[..., :5, :], whole[..., :5, :], atol=1e-5), "rows far from the cut are exact"


def test_a_band_of_the_wrong_height_is_refused() -> None:
    with pytest.raises(ValueError, match="band has 5 rows, expected 6"):
        project_rows(torch.zeros(1, 3, 5, 8), torch.zeros(1, 3, 2, 4), 10, range(2, 8))
