"""The consistency projection: it brings an output's MATLAB-bicubic shrink to the input, and a window of rows
and columns projected with its halo is exactly that window of the whole image's projection."""

from __future__ import annotations

import itertools

import pytest
import torch

from flowsr_cli.engine.pipeline import rgb_tensor
from flowsr_cli.engine.projection import halo_rows, project, project_window
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


def cuts_with_halos(length: int, halo: int) -> list[tuple[range, range]]:
    """Three parts of an axis ``length`` long, each as (part, part with ``halo`` cells on each side)."""
    cuts = [0, length // 3 + 1, length // 2 + 3, length]
    assert cuts[1] - halo > 0 or cuts[2] + halo < length, "some cut must have a halo inside the image"
    return [
        (range(start, stop), range(max(0, start - halo), min(length, stop + halo)))
        for start, stop in zip(cuts, cuts[1:])
    ]


@pytest.mark.parametrize(("scale", "iterations"), [(2, 3), (3, 3), (3.5, 3), (3.5, 1), (4, 3), (7.2, 3)])
def test_a_window_with_its_halo_equals_that_window_of_the_whole_projection(scale: float, iterations: int) -> None:
    generator = torch.Generator().manual_seed(round(scale * 10))
    lr = torch.rand(1, 3, 43, 47, generator=generator)
    size = SizeRequest(scale=scale).target(Size(47, 43))
    sr = torch.rand(1, 3, size.height, size.width, generator=generator)
    whole = project(sr, lr, iterations)
    row_parts = cuts_with_halos(size.height, halo_rows(size.height, 43, iterations))
    column_parts = cuts_with_halos(size.width, halo_rows(size.width, 47, iterations))
    whole_columns = (range(size.width), range(size.width))
    for (rows, row_window), (columns, column_window) in itertools.product(row_parts, [*column_parts, whole_columns]):
        window = project_window(
            sr[..., row_window.start : row_window.stop, column_window.start : column_window.stop],
            lr,
            (size.height, size.width),
            row_window,
            column_window,
            iterations,
        )
        top, left = rows.start - row_window.start, columns.start - column_window.start
        part = window[..., top : top + len(rows), left : left + len(columns)]
        expected = whole[..., rows.start : rows.stop, columns.start : columns.stop]
        assert torch.allclose(part, expected, atol=1e-5), (rows, columns)


@pytest.mark.parametrize("axis", [-2, -1])
def test_without_its_halo_a_window_differs_near_its_cut(axis: int) -> None:
    """The window test above is not vacuous: a cut without a halo changes the pixels next to it, along either axis."""
    generator = torch.Generator().manual_seed(3)
    lr = torch.rand(1, 3, 30, 30, generator=generator)
    sr = torch.rand(1, 3, 90, 90, generator=generator)
    whole = project(sr, lr)
    rows, columns = (range(45), range(90)) if axis == -2 else (range(90), range(45))
    part = project_window(sr[..., : len(rows), : len(columns)], lr, (90, 90), rows, columns)
    near, far = part.narrow(axis, 42, 3), part.narrow(axis, 0, 5)
    assert (near - whole.narrow(axis, 42, 3)).abs().max() > 1e-3
    assert torch.allclose(far, whole.narrow(axis, 0, 5), atol=1e-5), "pixels far from the cut are exact"


def test_a_window_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="window is 5x8 pixels, expected 6x8"):
        project_window(torch.zeros(1, 3, 5, 8), torch.zeros(1, 3, 2, 4), (10, 8), range(2, 8), range(8))
