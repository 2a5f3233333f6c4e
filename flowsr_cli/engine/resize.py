"""Bicubic resizing with MATLAB ``imresize(..., 'bicubic')`` semantics.

This is the single resize used across flowsr: the ``bicubic`` engine, LR synthesis for training,
LR images for evaluation and LR-PSNR. Super-resolution results are only comparable with the
literature when the degradation is MATLAB's, so this module reproduces it exactly: the a=-0.5
cubic kernel, the pixel-centre mapping ``u = i/s + 0.5*(1 - 1/s)``, kernel widening when
shrinking with antialiasing, per-sample weight normalisation and symmetric mirroring at borders.

The resize is separable and sparse: each axis is resized with a handful of taps per output
sample (``contributions``), gathered with ``index_select`` into a preallocated output in bounded
chunks, so memory stays proportional to the input plus the output even for very large images.
"""

from __future__ import annotations

import functools
import math
from numbers import Integral, Real
from typing import NamedTuple

import torch

__all__ = ["contributions", "cubic", "resize", "resize_window"]


def triangle(x: torch.Tensor) -> torch.Tensor:
    """The triangle kernel of MATLAB ``imresize`` 'bilinear'."""
    return (1 - x.abs()).clamp_min(0)


_KERNELS = {"cubic": (None, 4.0), "linear": (triangle, 2.0)}
"""Kernel name -> (function, support width in input pixels before antialias widening)."""

_CHUNK_ELEMENTS = 1 << 24
"""Upper bound on the elements of the temporary gathered for one tap while resizing one axis."""


def cubic(x: torch.Tensor) -> torch.Tensor:
    """The a=-0.5 cubic convolution kernel (Keys), as used by MATLAB ``imresize`` 'bicubic'."""
    absx = x.abs()
    absx2 = absx * absx
    absx3 = absx2 * absx
    inner = 1.5 * absx3 - 2.5 * absx2 + 1
    outer = -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
    return torch.where(absx <= 1, inner, torch.where(absx <= 2, outer, torch.zeros_like(outer)))


def contributions(
    in_size: int, out_size: int, scale: float, antialias: bool = True, kernel: str = "cubic"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse resampling matrix of one axis, as MATLAB ``imresize`` computes it.

    Returns ``(indices, weights)``, both of shape ``(out_size, P)``: ``indices`` (int64) index the
    input axis and are already mirrored into range; ``weights`` (float64) rows sum to 1. Output
    sample ``i`` is ``sum_j weights[i, j] * input[indices[i, j]]``. Taps whose weight is zero for
    every output sample are dropped.
    """
    indices, weights = _cached_contributions(
        _checked_size(in_size, "in_size"),
        _checked_size(out_size, "out_size"),
        _checked_scale(scale),
        bool(antialias),
        kernel,
    )
    return indices.clone(), weights.clone()


@functools.lru_cache(maxsize=64)
def _cached_contributions(
    in_size: int, out_size: int, scale: float, antialias: bool, kernel: str = "cubic"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contributions on the CPU, shared between calls; callers must not modify them in place."""
    function, support = _KERNELS[kernel]
    function = function or cubic
    kernel_scale = scale if antialias and scale < 1 else 1.0
    kernel_width = support / kernel_scale
    taps = math.ceil(kernel_width) + 2

    # 1-based positions, operations in MATLAB's order so that floor() rounds the same way.
    out_positions = torch.arange(1, out_size + 1, dtype=torch.float64)
    centres = out_positions / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(centres - kernel_width / 2)
    in_positions = left[:, None] + torch.arange(taps, dtype=torch.float64)

    weights = kernel_scale * function(kernel_scale * (centres[:, None] - in_positions))
    weights = weights / weights.sum(dim=1, keepdim=True)
    indices = _mirror(in_positions.to(torch.int64) - 1, in_size)

    used_taps = (weights != 0).any(dim=0)
    return indices[:, used_taps].contiguous(), weights[:, used_taps].contiguous()


def _mirror(indices: torch.Tensor, size: int) -> torch.Tensor:
    """Fold 0-based indices into ``[0, size)`` by symmetric extension ``[0..size-1, size-1..0]``."""
    period = 2 * size
    wrapped = torch.remainder(indices, period)
    return torch.where(wrapped < size, wrapped, period - 1 - wrapped)


def resize(
    x: torch.Tensor,
    size: tuple[int, int],
    scale: float | tuple[float, float] | None = None,
    antialias: bool = True,
    kernel: str = "cubic",
) -> torch.Tensor:
    """Resize the last two dims ``(..., H, W)`` of a float tensor to ``size = (H_out, W_out)``.

    Follows MATLAB ``imresize(..., 'bicubic')`` (``kernel="linear"``: 'bilinear'). ``scale`` is the
    kernel's scale factor (output over input): one number for both axes, a pair ``(sy, sx)``, or None
    for ``size / input size`` per axis. Weights are computed in float64 and applied in ``x``'s dtype on ``x``'s device.
    Returns a new tensor; values are not clamped.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"resize expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"resize expects a tensor with at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"resize expects a floating point tensor, got dtype {x.dtype}")
    in_height, in_width = x.shape[-2], x.shape[-1]
    if in_height < 1 or in_width < 1:
        raise ValueError(f"resize expects a non-empty image, got spatial size {in_height}x{in_width}")
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size must be a pair (H_out, W_out), got {size!r}")
    out_height = _checked_size(size[0], "size[0]")
    out_width = _checked_size(size[1], "size[1]")
    scale_y, scale_x = _scale_pair(scale, out_height / in_height, out_width / in_width)

    axes = [
        _Axis(-2, in_height, out_height, scale_y, range(out_height), 0),
        _Axis(-1, in_width, out_width, scale_x, range(out_width), 0),
    ]
    return _resize_axes(x, axes, antialias, kernel)


def resize_window(
    crop: torch.Tensor,
    full_size: tuple[int, int],
    size: tuple[int, int],
    rows: range,
    columns: range,
    origin: tuple[int, int],
    antialias: bool = True,
    kernel: str = "cubic",
) -> torch.Tensor:
    """Output rows ``rows`` x columns ``columns`` of ``resize(full, size)``, computed from ``crop``, the
    part of ``full`` (whose size is ``full_size``) with top-left corner ``origin``.

    The sampling grid is the whole image's, so windows tile the full result exactly; the crop must
    hold every input sample those outputs use (a ValueError says otherwise). Kernel scale is
    ``size / full_size``.
    """
    axes = [
        _Axis(-2, full_size[0], _checked_size(size[0], "size[0]"), size[0] / full_size[0], rows, origin[0]),
        _Axis(-1, full_size[1], _checked_size(size[1], "size[1]"), size[1] / full_size[1], columns, origin[1]),
    ]
    return _resize_axes(crop, axes, antialias, kernel)


class _Axis(NamedTuple):
    dim: int
    in_size: int
    out_size: int
    scale: float
    window: range
    origin: int


def _resize_axes(x: torch.Tensor, axes: list[_Axis], antialias: bool, kernel: str) -> torch.Tensor:
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(_KERNELS)}, got {kernel!r}")
    # Resizing along different axes commutes in exact arithmetic (out = A·X·Bᵀ), so the order
    # only changes float rounding. MATLAB's order is kept: smallest scale first (stable on ties),
    # which also shrinks before it enlarges and so keeps the intermediate image small.
    axes = sorted(axes, key=lambda axis: axis.scale)
    result = x
    for axis in axes:
        whole = axis.window == range(axis.out_size) and axis.origin == 0 and x.shape[axis.dim] == axis.in_size
        if whole and axis.in_size == axis.out_size and axis.scale == 1:
            continue
        indices, weights = _cached_contributions(axis.in_size, axis.out_size, axis.scale, bool(antialias), kernel)
        indices = indices[axis.window.start : axis.window.stop] - axis.origin
        if indices.numel() and (indices.min() < 0 or indices.max() >= result.shape[axis.dim]):
            raise ValueError("the crop does not hold every input sample the requested window uses")
        result = _resize_axis(result, axis.dim, indices, weights[axis.window.start : axis.window.stop])
    return result.clone() if result is x else result


def _resize_axis(x: torch.Tensor, dim: int, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Apply one axis' contributions to ``x`` along ``dim`` (-2 or -1), chunk by chunk."""
    out_size, taps = indices.shape
    indices = indices.to(x.device)
    # Per tap, one weight per output sample, shaped to broadcast along the resized dim.
    tap_weights = weights.to(device=x.device, dtype=x.dtype).t()
    if dim == -2:
        tap_weights = tap_weights[:, :, None]

    out_shape = list(x.shape)
    out_shape[dim] = out_size
    result = x.new_empty(out_shape)
    elements_per_sample = max(1, result.numel() // out_size)
    chunk = max(1, _CHUNK_ELEMENTS // elements_per_sample)
    for start in range(0, out_size, chunk):
        stop = min(start + chunk, out_size)
        target = result.narrow(dim, start, stop - start)
        target.copy_(x.index_select(dim, indices[start:stop, 0]))
        target.mul_(tap_weights[0, start:stop])
        for tap in range(1, taps):
            target.addcmul_(x.index_select(dim, indices[start:stop, tap]), tap_weights[tap, start:stop])
    return result


def _checked_size(value: int, name: str) -> int:
    """``value`` as an int if it is an integer ≥ 1, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _checked_scale(value: float) -> float:
    """``value`` as a float if it is a finite real number > 0, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {value!r}")
    return float(value)


def _scale_pair(scale: float | tuple[float, float] | None, default_y: float, default_x: float) -> tuple[float, float]:
    """The (sy, sx) kernel scales from ``resize``'s ``scale`` argument."""
    if scale is None:
        return default_y, default_x
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or a pair (sy, sx), got {scale!r}")
        return _checked_scale(scale[0]), _checked_scale(scale[1])
    checked = _checked_scale(scale)
    return checked, checked
