"""The literature's super-resolution evaluation protocol (DESIGN.md §7), in torch, on any device.

Images are float tensors ``(B, 3, H, W)`` with values in [0, 1] unless a function says otherwise;
per-image metrics return a tensor of shape ``(B,)``. Super-resolved outputs (``sr``) may contain
values outside [0, 1] or non-finite values (exploding inverses): the metrics evaluate them after
``nan_to_num`` (NaN → 0, ±inf → the nearest bound) and clamping to [0, 1], while ``is_finite``
looks at them as they are. Ground truth and LR inputs are taken as given.

PSNR and SSIM are computed in float64 (float32 on Apple MPS, which has no float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from flowsr_cli.engine.resize import resize
from flowsr_cli.errors import ImageError
from flowsr_cli.io.sizing import round_half_up

if TYPE_CHECKING:
    from flowsr_cli.config import Settings

__all__ = [
    "LPIPS",
    "colour_shift",
    "crop_to_scale",
    "grid_ratio",
    "grid_share",
    "is_finite",
    "lr_psnr",
    "make_lr",
    "psnr",
    "psnr_rgb",
    "psnr_y",
    "rgb_to_y",
    "sample_diversity",
    "shave",
    "ssim_y",
]

_Y_WEIGHTS = (65.481, 128.553, 24.966)
"""BT.601 luma weights of MATLAB ``rgb2ycbcr`` for RGB in [0, 1], giving Y in [16, 235]."""

SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


def crop_to_scale(hr: torch.Tensor, scale: float) -> tuple[torch.Tensor, tuple[int, int]]:
    """HR cropped (top-left anchored) to a size that ``scale`` divides, and the LR size ``(h, w)``.

    The LR size is ``floor(H/s) × floor(W/s)``; HR keeps ``round(floor(H/s)·s)`` rows (halves up),
    the same for columns, so non-integer scales work too. An image smaller than ``scale`` is an
    ImageError.
    """
    if not (math.isfinite(scale) and scale >= 1):
        raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
    height, width = hr.shape[-2:]
    lr_size = (math.floor(height / scale), math.floor(width / scale))
    if min(lr_size) < 1:
        raise ImageError(f"the image is {width}×{height}, too small for ×{scale:g}")
    hr_height, hr_width = (round_half_up(side * scale) for side in lr_size)
    return hr[..., :hr_height, :hr_width], lr_size


def make_lr(hr: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The protocol's ``(hr_cropped, lr)`` pair: MATLAB ``imresize(hr, 1/s)`` bicubic, stored as 8 bits.

    HR is cropped with ``crop_to_scale``, shrunk with the project's MATLAB bicubic at kernel scale
    ``1/scale`` (antialiased), then quantised as an 8-bit image file would be: clamped to [0, 1] and
    rounded (halves up, like MATLAB's uint8 conversion) to multiples of 1/255, because the published
    protocol evaluates models on uint8 LR images.
    """
    hr_cropped, lr_size = crop_to_scale(hr, scale)
    lr = resize(hr_cropped, lr_size, scale=1 / scale)
    return hr_cropped, torch.floor(lr.clamp(0, 1) * 255 + 0.5) / 255


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """BT.601 luma ``(B, 1, H, W)`` of RGB in [0, 1], as MATLAB ``rgb2ycbcr`` / 255 (black 16/255, white 235/255)."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects (B, 3, H, W), got shape {tuple(image.shape)}")
    weights = torch.tensor(_Y_WEIGHTS, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return ((image * weights).sum(dim=1, keepdim=True) + 16) / 255


def shave(image: torch.Tensor, pixels: int) -> torch.Tensor:
    """``image`` without ``pixels`` rows and columns at each border."""
    height, width = image.shape[-2:]
    if pixels < 0 or 2 * pixels >= min(height, width):
        raise ValueError(f"cannot shave {pixels} pixels from each border of a {width}×{height} image")
    if pixels == 0:
        return image
    return image[..., pixels:-pixels, pixels:-pixels]


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per image ``(B,)`` over all channels and pixels; +inf where the images are identical."""
    _check_same_shape(a, b)
    dtype = _metric_dtype(a.device)
    mse = (a.to(dtype) - b.to(dtype)).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, scale: float) -> torch.Tensor:
    """PSNR ``(B,)`` on BT.601 Y of the clamped ``sr`` against ``hr``, ``ceil(scale)`` pixels shaved per border."""
    _check_same_shape(sr, hr)
    border = math.ceil(scale)
    dtype = _metric_dtype(sr.device)
    return psnr(shave(rgb_to_y(_clean(sr).to(dtype)), border), shave(rgb_to_y(hr.to(dtype)), border))


def psnr_rgb(sr: torch.Tensor, hr: torch.Tensor, scale: float) -> torch.Tensor:
    """PSNR ``(B,)`` on RGB of the clamped ``sr`` against ``hr``, ``ceil(scale)`` pixels shaved per border."""
    border = math.ceil(scale)
    return psnr(shave(_clean(sr), border), shave(hr, border))


def ssim_y(sr: torch.Tensor, hr: torch.Tensor, scale: float) -> torch.Tensor:
    """SSIM ``(B,)`` on BT.601 Y (0–255 range) of the clamped ``sr`` against ``hr``, ``ceil(scale)`` shaved.

    Follows the reference convention of Wang et al.'s MATLAB ``ssim_index`` as used by BasicSR's
    ``calculate_ssim`` (no installed library implements it): an 11×11 Gaussian window with σ 1.5,
    'valid' filtering (no padding), C1 = (0.01·255)², C2 = (0.03·255)², mean of the SSIM map.
    """
    _check_same_shape(sr, hr)
    border = math.ceil(scale)
    dtype = _metric_dtype(sr.device)
    x = shave(rgb_to_y(_clean(sr).to(dtype)), border) * 255
    y = shave(rgb_to_y(hr.to(dtype)), border) * 255
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels after shaving")
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
    var_x = _gaussian_filter(x * x) - mu_x * mu_x
    var_y = _gaussian_filter(y * y) - mu_y * mu_y
    covariance = _gaussian_filter(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def lr_psnr(sr: torch.Tensor, lr: torch.Tensor, scale: float) -> torch.Tensor:
    """PSNR ``(B,)`` of the clamped ``sr`` shrunk back to ``lr``'s size (same bicubic, kernel ``1/scale``) vs ``lr``.

    RGB, values in [0, 1], no shave; the downscaled SR is not quantised.
    """
    downscaled = resize(_clean(sr), tuple(lr.shape[-2:]), scale=1 / scale)
    return psnr(downscaled, lr)


GRID_FLANK = 6
"""FFT bins on each side of a grid frequency that set the level the grid's own bins are compared with."""

GRID_NO_DETAIL = 1e-4
"""Detail RMS (Y on the [0, 1] scale, about 1/40 of a level of 255) below which an image has no detail: its
grid share is 0 (the bicubic baseline's detail is zero up to rounding)."""


def grid_share(image: torch.Tensor, lr: torch.Tensor, scale: float, period: int) -> torch.Tensor:
    """How much ``image``'s detail power stands out at spatial period ``period`` ``(B,)``.

    Detail: BT.601 Y of the clamped ``image`` minus Y of the clamped bicubic enlargement of ``lr`` to its
    size, ``ceil(scale)`` pixels shaved per border, then cropped (bottom, right) to multiples of ``period``
    so that the grid's frequencies fall on FFT bins; its mean removed, a periodic 2-D Hann window applied.
    Share: of the 2-D power on the lines of horizontal frequency ``k·W/p + d`` and vertical frequency
    ``k·H/p + d`` (k = 1..p-1, ``|d| <= GRID_FLANK``), the part on the lines with ``|d| <= 1`` (the
    Hann window's main lobe); each bin counts once. A spectrum smooth around those frequencies (photos,
    noise, blur) gives about 3 / (2·GRID_FLANK + 1); a pattern repeating every ``period`` pixels pushes it
    towards 1. 0 if the detail's RMS is below ``GRID_NO_DETAIL``; NaN where the region is too small to
    separate the lines (fewer than ``period·(2·GRID_FLANK + 2)`` pixels on a side)."""
    return _share(_detail(image, _enlarged_y(lr, image), scale), period)


def grid_ratio(sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, scale: float, period: int) -> torch.Tensor:
    """``grid_share`` of the clamped ``sr`` over that of ``hr`` ``(B,)``: 1.0 is as much detail power at
    ``period`` as the photo has; a patch grid scores above 1. NaN where ``hr``'s share is 0 or NaN."""
    _check_same_shape(sr, hr)
    enlarged = _enlarged_y(lr, hr)
    reference = _share(_detail(hr, enlarged, scale), period)
    ratio = _share(_detail(sr, enlarged, scale), period) / reference
    return torch.where(reference > 0, ratio, torch.full_like(ratio, math.nan))


def _enlarged_y(lr: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Y of the clamped bicubic enlargement of ``lr`` to ``like``'s size, in the metrics' dtype."""
    enlarged = resize(lr, tuple(like.shape[-2:])).clamp(0, 1)
    return rgb_to_y(enlarged.to(_metric_dtype(like.device)))


def _detail(image: torch.Tensor, enlarged_y: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, H', W')``: Y of the clamped ``image`` minus ``enlarged_y``, ``ceil(scale)`` pixels shaved."""
    return shave(rgb_to_y(_clean(image).to(enlarged_y.dtype)) - enlarged_y, math.ceil(scale))[:, 0]


def _share(detail: torch.Tensor, period: int) -> torch.Tensor:
    """``grid_share`` of a detail image ``(B, H, W)``."""
    rows, columns = (side - side % period for side in detail.shape[-2:])
    if period < 2 or min(rows, columns) < period * (2 * GRID_FLANK + 2):
        return torch.full(detail.shape[:1], math.nan, dtype=detail.dtype, device=detail.device)
    detail = detail[:, :rows, :columns]
    detail = detail - detail.mean(dim=(-2, -1), keepdim=True)
    window = torch.outer(_hann(rows, detail), _hann(columns, detail))
    power = torch.fft.fft2(detail * window).abs().square()
    on_lines = _grid_bins(rows, columns, period, range(-1, 2), detail.device)
    near_lines = _grid_bins(rows, columns, period, range(-GRID_FLANK, GRID_FLANK + 1), detail.device)
    at_period = power[:, on_lines].sum(dim=1)
    share = at_period / power[:, near_lines].sum(dim=1)
    flat = detail.square().flatten(1).mean(dim=1).sqrt() < GRID_NO_DETAIL
    return torch.where(flat, torch.zeros_like(share), share)


def colour_shift(sr: torch.Tensor, hr: torch.Tensor, scale: float) -> torch.Tensor:
    """The largest absolute per-channel mean shift ``(B,)`` of the clamped ``sr`` from ``hr``, in levels
    of 255: ``max_c |mean(sr_c - hr_c)|`` over the pixels left after shaving ``ceil(scale)`` per border."""
    _check_same_shape(sr, hr)
    dtype = _metric_dtype(sr.device)
    difference = shave(_clean(sr).to(dtype) - hr.to(dtype), math.ceil(scale))
    return (255 * difference.mean(dim=(-2, -1))).abs().amax(dim=1)


def _hann(length: int, like: torch.Tensor) -> torch.Tensor:
    return torch.hann_window(length, periodic=True, dtype=like.dtype, device=like.device)


def _grid_bins(rows: int, columns: int, period: int, offsets: range, device: torch.device) -> torch.Tensor:
    """Boolean ``(rows, columns)``: the FFT bins ``offsets`` away from vertical or horizontal frequency
    ``k/period``."""

    def lines(length: int) -> torch.Tensor:
        centres = torch.arange(1, period, device=device) * (length // period)
        return torch.remainder(centres[:, None] + torch.tensor(list(offsets), device=device), length).flatten()

    mask = torch.zeros(rows, columns, dtype=torch.bool, device=device)
    mask[lines(rows), :] = True
    mask[:, lines(columns)] = True
    return mask


def is_finite(sr: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B,)``: True where every value of the image is finite (the inf rate uses raw, unclamped outputs)."""
    return torch.isfinite(sr).flatten(1).all(dim=1)


def sample_diversity(samples: Sequence[torch.Tensor]) -> float:
    """Mean over pixels of the per-pixel population standard deviation across runs (clamped samples)."""
    if not samples:
        raise ValueError("sample_diversity needs at least one sample")
    stacked = torch.stack([_clean(sample) for sample in samples])
    return stacked.std(dim=0, correction=0).mean().item()


LPIPS_MIN_SIDE = 31
"""The smallest side LPIPS (AlexNet) takes: an 11-pixel convolution at stride 4, then two 3-pixel max-pools."""


class LPIPS:
    """LPIPS (``lpips`` package, net='alex', version 0.1) on whole images in [0, 1].

    The AlexNet weights come from :mod:`flowsr_cli.eval.backbones` with ``settings`` (default: the
    user's): ``backbone_dir``, else caches, else downloaded once unless offline."""

    def __init__(self, device: torch.device | str = "cpu", settings: Settings | None = None) -> None:
        from flowsr_cli.eval.backbones import load_lpips_alex

        self.device = torch.device(device)
        self.model = load_lpips_alex(self.device, settings)

    def __call__(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """LPIPS distance ``(B,)`` between the clamped ``sr`` and ``hr`` (mapped to [-1, 1] for lpips)."""
        _check_same_shape(sr, hr)
        with torch.no_grad():
            sr_input = _clean(sr).to(self.device, torch.float32) * 2 - 1
            hr_input = hr.to(self.device, torch.float32) * 2 - 1
            return self.model(sr_input, hr_input).flatten()


def _clean(sr: torch.Tensor) -> torch.Tensor:
    """``sr`` with NaN → 0, ±inf → the nearest bound, clamped to [0, 1]."""
    return torch.nan_to_num(sr, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)


def _gaussian_filter(image: torch.Tensor) -> torch.Tensor:
    """``image (B, 1, H, W)`` filtered with the normalised 11×11 Gaussian (σ 1.5), 'valid' (output 10 px smaller)."""
    offsets = torch.arange(SSIM_WINDOW, dtype=image.dtype, device=image.device) - (SSIM_WINDOW - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    kernel = kernel / kernel.sum()
    filtered = F.conv2d(image, kernel.view(1, 1, SSIM_WINDOW, 1))
    return F.conv2d(filtered, kernel.view(1, 1, 1, SSIM_WINDOW))


def _metric_dtype(device: torch.device) -> torch.dtype:
    """float64 for accurate sums, except where the device has none (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _check_same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    """ValueError unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
