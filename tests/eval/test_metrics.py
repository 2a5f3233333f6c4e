"""The evaluation protocol's metrics, on Set5 images and against hand-computed or independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import resize_right
import torch
from PIL import Image
from resize_right import interp_methods
from scipy.signal import convolve2d
from scipy.signal.windows import gaussian

from flowsr_cli.engine.projection import project
from flowsr_cli.engine.resize import resize
from flowsr_cli.errors import ImageError
from flowsr_cli.eval.metrics import (
    colour_shift,
    crop_to_scale,
    grid_ratio,
    grid_share,
    is_finite,
    lr_psnr,
    make_lr,
    psnr,
    psnr_rgb,
    psnr_y,
    rgb_to_y,
    sample_diversity,
    shave,
    ssim_y,
)
from tests.conftest import SHARED

SET5 = SHARED / "data/eval/Set5"


def load_set5(name: str) -> torch.Tensor:
    """A Set5 image as a float32 tensor (1, 3, H, W) in [0, 1]."""
    with Image.open(SET5 / f"{name}.png") as image:
        pixels = np.array(image.convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


def noisy(image: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """``image`` plus Gaussian noise (not clamped)."""
    generator = torch.Generator().manual_seed(seed)
    return image + sigma * torch.randn(image.shape, generator=generator)


def reference_ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """SSIM in the MATLAB ssim_index / BasicSR convention, in plain numpy + scipy, for (H, W, 3) RGB in [0, 1]."""
    weights = np.array([65.481, 128.553, 24.966])
    x = np.clip(sr, 0, 1) @ weights + 16
    y = hr @ weights + 16
    x, y = x[border:-border, border:-border], y[border:-border, border:-border]
    window = np.outer(gaussian(11, 1.5), gaussian(11, 1.5))
    window /= window.sum()

    def filt(image: np.ndarray) -> np.ndarray:
        return convolve2d(image, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def test_psnr_of_known_offsets() -> None:
    base = load_set5("bird") * 0.8
    images = torch.cat([base, base])
    shifted = torch.cat([base + 0.1, base - 0.01])
    # MSE 0.01 -> 10·log10(1/0.01) = 20 dB; MSE 1e-4 -> 40 dB.
    assert psnr(shifted, images).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    assert psnr(shifted * 255, images * 255, data_range=255.0).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)


def test_psnr_of_identical_images_is_inf() -> None:
    image = load_set5("head")
    assert psnr(image, image).tolist() == [math.inf]
    assert psnr_y(image, image, 2).tolist() == [math.inf]


def test_psnr_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_shaved_border_does_not_count() -> None:
    hr = load_set5("butterfly")
    sr = noisy(hr, 0.05).clamp(0, 1)
    border = math.ceil(3.5)  # 4 pixels
    corrupted = sr.clone()
    corrupted[..., :border, :] = 1 - corrupted[..., :border, :]
    corrupted[..., -border:, :] = 0
    corrupted[..., :, :border] = 1
    corrupted[..., :, -border:] = torch.rand(corrupted[..., :, -border:].shape)
    for metric in (psnr_y, psnr_rgb, ssim_y):
        assert metric(corrupted, hr, 3.5).item() == pytest.approx(metric(sr, hr, 3.5).item(), abs=1e-9)
    inside = sr.clone()
    inside[..., border, border:-border] = 1 - inside[..., border, border:-border]
    for metric in (psnr_y, psnr_rgb, ssim_y):
        assert metric(inside, hr, 3.5).item() < metric(sr, hr, 3.5).item() - 1e-5


def test_shave() -> None:
    image = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).view(2, 3, 6, 7)
    assert torch.equal(shave(image, 2), image[:, :, 2:4, 2:5])
    assert torch.equal(shave(image, 0), image)
    with pytest.raises(ValueError, match="shave"):
        shave(image, 3)


def test_rgb_to_y_bt601_values() -> None:
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(
        5, 3, 1, 1
    )
    y = rgb_to_y(colours.expand(5, 3, 2, 2))
    assert y.shape == (5, 1, 2, 2)
    # White 16 + 219 = 235, black 16, and 16 + each weight alone for pure red, green and blue.
    expected = torch.tensor([235.0, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966]) / 255
    torch.testing.assert_close(y[:, 0, 0, 0], expected, atol=1e-6, rtol=0)
    assert torch.all(y == y[:, :, :1, :1])


def test_psnr_y_uses_luma_only() -> None:
    hr = load_set5("woman")
    # A chroma-only change: +d on red and blue, and a green change that keeps Y exactly.
    delta = 0.02
    shifted = hr.clone()
    shifted[:, 0] += delta
    shifted[:, 2] += delta
    shifted[:, 1] -= delta * (65.481 + 24.966) / 128.553
    inside = (shifted >= 0).all(dim=1, keepdim=True) & (shifted <= 1).all(dim=1, keepdim=True)
    sr = torch.where(inside, shifted, hr)
    assert psnr_y(sr, hr, 2).item() > 100
    assert psnr_rgb(sr, hr, 2).item() < 40


def test_ssim_of_image_with_itself_is_one() -> None:
    hr = load_set5("head")
    assert ssim_y(hr, hr, 4).item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise() -> None:
    hr = load_set5("bird")
    values = [ssim_y(noisy(hr, sigma), hr, 2).item() for sigma in (0.01, 0.03, 0.1)]
    assert values[0] < 1
    assert values[0] > values[1] > values[2]


def test_ssim_matches_numpy_scipy_reference_on_random_images() -> None:
    generator = torch.Generator().manual_seed(7)
    hr = torch.rand(3, 3, 37, 45, generator=generator)
    sr = hr + 0.2 * torch.randn(hr.shape, generator=generator)  # partly outside [0, 1]: clamped by both
    ours = ssim_y(sr, hr, 3)
    for index in range(3):
        expected = reference_ssim_y(
            sr[index].permute(1, 2, 0).double().numpy(), hr[index].permute(1, 2, 0).double().numpy(), 3
        )
        assert ours[index].item() == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_numpy_scipy_reference_on_set5() -> None:
    hr = load_set5("head")
    sr = noisy(hr, 0.04)
    expected = reference_ssim_y(sr[0].permute(1, 2, 0).double().numpy(), hr[0].permute(1, 2, 0).double().numpy(), 4)
    assert ssim_y(sr, hr, 4).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_needs_a_full_window() -> None:
    with pytest.raises(ValueError, match="SSIM"):
        ssim_y(torch.rand(1, 3, 18, 30), torch.rand(1, 3, 18, 30), 4)


def test_crop_to_scale_non_integer() -> None:
    hr = torch.rand(1, 3, 255, 321)
    cropped, lr_size = crop_to_scale(hr, 3.5)
    # 255/3.5 = 72.86 -> 72, 72·3.5 = 252; 321/3.5 = 91.71 -> 91, 91·3.5 = 318.5 -> 319 (half up).
    assert lr_size == (72, 91)
    assert cropped.shape == (1, 3, 252, 319)
    assert torch.equal(cropped, hr[..., :252, :319])


@pytest.mark.parametrize(
    ("size", "scale", "lr_size", "hr_size"),
    [
        ((256, 256), 3, (85, 85), (255, 255)),
        ((288, 288), 4, (72, 72), (288, 288)),
        ((228, 344), 2, (114, 172), (228, 344)),
        ((228, 344), 6, (38, 57), (228, 342)),
        ((10, 11), 2.5, (4, 4), (10, 10)),
    ],
)
def test_crop_to_scale_sizes(
    size: tuple[int, int], scale: float, lr_size: tuple[int, int], hr_size: tuple[int, int]
) -> None:
    cropped, got_lr_size = crop_to_scale(torch.zeros(2, 3, *size), scale)
    assert got_lr_size == lr_size
    assert cropped.shape[-2:] == hr_size


def test_crop_to_scale_rejects_tiny_image() -> None:
    with pytest.raises(ImageError, match="too small"):
        crop_to_scale(torch.zeros(1, 3, 3, 40), 4)


def test_make_lr_integer_scale_matches_resize_right() -> None:
    hr = load_set5("butterfly")
    hr_cropped, lr = make_lr(hr, 3)
    assert hr_cropped.shape[-2:] == (255, 255)
    assert lr.shape == (1, 3, 85, 85)
    reference = resize_right.resize(
        hr_cropped[0].double().numpy(),
        scale_factors=[1, 1 / 3, 1 / 3],
        out_shape=[3, 85, 85],
        interp_method=interp_methods.cubic,
        antialiasing=True,
        pad_mode="symmetric",
    )
    reference = np.floor(np.clip(reference, 0, 1) * 255 + 0.5) / 255
    difference = np.abs(lr[0].double().numpy() - reference)
    assert difference.max() <= 1 / 255 + 1e-6
    assert (difference < 1e-6).mean() > 0.999


def test_make_lr_is_quantised_and_uses_kernel_scale_one_over_s() -> None:
    hr = load_set5("woman")
    hr_cropped, lr = make_lr(hr, 3.5)
    # 344×228 (H×W): 344/3.5 = 98.3 -> 98, 98·3.5 = 343; 228/3.5 = 65.1 -> 65, 65·3.5 = 227.5 -> 228.
    assert hr_cropped.shape[-2:] == (343, 228)
    assert lr.shape == (1, 3, 98, 65)
    assert lr.min() >= 0 and lr.max() <= 1
    levels = lr * 255
    assert torch.all((levels - levels.round()).abs() < 1e-4)
    explicit = resize(hr_cropped, (98, 65), scale=1 / 3.5).clamp(0, 1)
    derived = resize(hr_cropped, (98, 65)).clamp(0, 1)
    assert (lr - explicit).abs().max() <= 0.5 / 255 + 1e-6
    assert (lr - derived).abs().max() > 1 / 255


def test_lr_psnr_of_hr_against_its_lr_is_high() -> None:
    for name, scale in (("bird", 4), ("butterfly", 3), ("woman", 3.5)):
        hr_cropped, lr = make_lr(load_set5(name), scale)
        assert lr_psnr(hr_cropped, lr, scale).item() > 40
        blurred = resize(resize(hr_cropped, lr.shape[-2:]), hr_cropped.shape[-2:])
        assert lr_psnr(torch.flip(blurred, dims=[-1]), lr, scale).item() < 25


def test_lr_psnr_clamps_sr() -> None:
    hr_cropped, lr = make_lr(load_set5("head"), 2)
    bright = hr_cropped.clone()
    bright[..., :40, :40] = 5.0
    clamped = bright.clamp(0, 1)
    assert lr_psnr(bright, lr, 2).item() == pytest.approx(lr_psnr(clamped, lr, 2).item(), abs=1e-9)


def test_is_finite_flags_rows() -> None:
    images = load_set5("bird").repeat(4, 1, 1, 1)
    images[1, 0, 10, 10] = float("nan")
    images[2, 2, 0, 0] = float("inf")
    images[3, 1, 5, 7] = -float("inf")
    assert is_finite(images).tolist() == [True, False, False, False]


def test_metrics_of_non_finite_sr_use_cleaned_values() -> None:
    hr = load_set5("bird")
    sr = noisy(hr, 0.02)
    broken = sr.clone()
    broken[..., 100:110, 100:110] = float("nan")
    broken[..., 200:210, 50:60] = float("inf")
    cleaned = sr.clamp(0, 1)
    cleaned[..., 100:110, 100:110] = 0
    cleaned[..., 200:210, 50:60] = 1
    for metric in (psnr_y, psnr_rgb, ssim_y):
        value = metric(broken, hr, 2)
        assert torch.isfinite(value).all()
        assert value.item() == pytest.approx(metric(cleaned, hr, 2).item(), abs=1e-9)


def test_sample_diversity() -> None:
    image = load_set5("butterfly") * 0.8
    assert sample_diversity([image, image.clone(), image.clone()]) == 0.0
    # Two samples a and a + 0.2: population std at every pixel is 0.1.
    assert sample_diversity([image, image + 0.2]) == pytest.approx(0.1, abs=1e-6)
    # Clamped first: 1 and 3 both count as 1.
    assert sample_diversity([torch.ones(1, 3, 4, 4), torch.full((1, 3, 4, 4), 3.0)]) == 0.0
    with pytest.raises(ValueError):
        sample_diversity([])


def periodic(image: torch.Tensor, period: int, levels: float) -> torch.Tensor:
    """``image`` plus a cross-hatch of period ``period`` (cosines along rows and columns), ``levels`` of 255 each."""
    height, width = image.shape[-2:]
    rows, columns = torch.arange(height)[:, None], torch.arange(width)[None]
    waves = torch.cos(2 * math.pi * rows / period) + torch.cos(2 * math.pi * columns / period)
    return image + levels / 255 * waves


def reference_grid_share(image: np.ndarray, lr: np.ndarray, border: int, period: int, flank: int = 6) -> float:
    """``grid_share`` in numpy from its definition, bins collected as sets of (row, column) pairs.
    ``image`` (H, W, 3) in [0, 1], ``lr`` its bicubic enlargement's source already enlarged and clamped."""
    weights = np.array([65.481, 128.553, 24.966]) / 255
    detail = (np.clip(image, 0, 1) - lr) @ weights
    detail = detail[border:-border, border:-border]
    rows, columns = (side - side % period for side in detail.shape)
    detail = detail[:rows, :columns] - detail[:rows, :columns].mean()
    window = np.outer(np.hanning(rows + 1)[:-1], np.hanning(columns + 1)[:-1])
    power = np.abs(np.fft.fft2(detail * window)) ** 2

    def bins(offsets: range) -> set[tuple[int, int]]:
        found = set()
        for k in range(1, period):
            for offset in offsets:
                found |= {((k * rows // period + offset) % rows, column) for column in range(columns)}
                found |= {(row, (k * columns // period + offset) % columns) for row in range(rows)}
        return found

    on, near = bins(range(-1, 2)), bins(range(-flank, flank + 1))
    return sum(power[bin_] for bin_ in on) / sum(power[bin_] for bin_ in near)


@pytest.mark.parametrize(("scale", "period"), [(2, 3), (3.5, 2), (4, 5)])
def test_grid_share_matches_a_numpy_reference(scale: float, period: int) -> None:
    hr, lr = make_lr(load_set5("head")[..., :100, :90] if period < 5 else load_set5("head"), scale)
    image = noisy(hr, 0.02)
    enlarged = resize(lr.double(), tuple(hr.shape[-2:])).clamp(0, 1)

    def to_numpy(tensor: torch.Tensor) -> np.ndarray:
        return tensor[0].permute(1, 2, 0).double().numpy()

    expected = reference_grid_share(to_numpy(image), to_numpy(enlarged), math.ceil(scale), period)
    assert grid_share(image, lr.double(), scale, period).item() == pytest.approx(expected, rel=1e-9)
    assert grid_share(image, lr, scale, period).item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_grid_ratio_is_one_for_the_photo_and_far_above_with_a_period_3_grid(scale: int) -> None:
    hr, lr = make_lr(load_set5("bird"), scale)
    assert grid_ratio(hr, hr, lr, scale, 3).item() == 1.0
    assert grid_ratio(periodic(hr, 3, 2.0), hr, lr, scale, 3).item() > 2.5
    assert grid_ratio(periodic(hr, 3, 0.5), hr, lr, scale, 3).item() > 1.2


def test_grid_ratio_at_period_3_barely_moves_for_a_period_4_grid() -> None:
    hr, lr = make_lr(load_set5("bird"), 2)
    gridded = periodic(hr, 4, 2.0)
    assert grid_ratio(gridded, hr, lr, 2, 4).item() > 2
    assert 0.9 < grid_ratio(gridded, hr, lr, 2, 3).item() < 1.1


@pytest.mark.parametrize("scale", [2, 3])
def test_grid_ratio_of_outputs_without_a_pattern_is_about_one(scale: int) -> None:
    hr, lr = make_lr(load_set5("woman"), scale)
    bicubic = resize(lr, tuple(hr.shape[-2:]))
    assert grid_ratio(bicubic, hr, lr, scale, 3).item() == 0.0  # no detail at all
    assert 0.7 < grid_ratio(project(bicubic, lr), hr, lr, scale, 3).item() < 1.3
    assert 0.7 < grid_ratio(noisy(hr, 0.05), hr, lr, scale, 3).item() < 1.3  # white noise: no peak
    blurred = resize(resize(hr, (hr.shape[-2] // 2, hr.shape[-1] // 2)), tuple(hr.shape[-2:]))
    assert grid_ratio(blurred, hr, lr, scale, 3).item() < 1.3


def test_grid_share_is_nan_on_regions_too_small_for_the_period() -> None:
    hr, lr = make_lr(load_set5("bird")[..., :50, :50], 2)
    assert math.isnan(grid_share(hr, lr, 2, 4).item())
    assert math.isnan(grid_ratio(hr, hr, lr, 2, 4).item())
    assert not math.isnan(grid_share(hr, lr, 2, 3).item())


def test_colour_shift_is_the_largest_channel_mean_offset_in_levels() -> None:
    hr = 0.1 + 0.8 * load_set5("head")
    shifted = hr.clone()
    shifted[:, 0] += 0.5 / 255
    shifted[:, 1] -= 2 / 255
    assert colour_shift(hr, hr, 2).item() == 0.0
    assert colour_shift(shifted, hr, 2).item() == pytest.approx(2.0, abs=1e-6)
    assert colour_shift(torch.cat([shifted, noisy(hr, 0.05)]), torch.cat([hr, hr]), 2)[1].item() < 0.1
    border_only = hr.clone()
    border_only[..., :2, :] = 1.0
    assert colour_shift(border_only, hr, 2).item() == 0.0
    assert colour_shift(hr + 1, hr, 2).item() == pytest.approx(255 * (1 - hr[..., 2:-2, 2:-2]).mean(dim=(-2, -1)).max())
