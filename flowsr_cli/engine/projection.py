"""Consistency projection: make an upscale agree with its input under the evaluation protocol's shrink.

An output ``x`` is consistent with its input ``y`` when ``down(x) = y``, ``down`` being the MATLAB
bicubic of :mod:`flowsr_cli.engine.resize` (antialiased, kernel scale = input size / output size per
axis, as LR-PSNR measures it). Iterative back-projection moves ``x`` towards that set and keeps it in
the valid value range::

    x <- clamp(x + up(y - down(x)))

with ``up`` the bicubic enlargement from the input size back to the output's. Both resizes are separable
sparse operators; along the columns they act on whole rows, along the rows on a band of rows, so a band
of output rows can be projected on its own: each iteration spreads an error at the band's cut edges by
at most :func:`halo_rows` / iterations output rows, and rows farther than :func:`halo_rows` from a cut
are the same as when projecting the whole image. Everything here is differentiable (training uses it).
"""

from __future__ import annotations

import math

import torch

from flowsr_cli.engine.resize import contributions

DEFAULT_ITERATIONS = 3
"""Back-projection iterations of ``--consistency on``."""


def halo_rows(out_size: int, in_size: int, iterations: int) -> int:
    """Output rows next to a band's cut edge that may differ from projecting the whole image.

    Per iteration an error travels at most half a ``down`` footprint (``ceil(4s) + 2`` output rows at
    scale ``s = out_size / in_size``) and half an ``up`` footprint (6 input rows, ``6 ceil(s)`` output rows)."""
    scale = out_size / in_size
    per_iteration = math.ceil(2 * scale) + 1 + 3 * math.ceil(scale)
    return iterations * per_iteration + 2 * math.ceil(scale)


def _apply(x: torch.Tensor, dim: int, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_t weights[:, t] * x.index_select(dim, indices[:, t])`` along ``dim`` (-2 or -1)."""
    indices = indices.to(x.device)
    weights = weights.to(device=x.device, dtype=x.dtype)
    shape = (-1, 1) if dim == -2 else (-1,)
    result = x.index_select(dim, indices[:, 0]) * weights[:, 0].view(shape)
    for tap in range(1, indices.shape[1]):
        result = result + x.index_select(dim, indices[:, tap]) * weights[:, tap].view(shape)
    return result


class _RowOperators:
    """The row-axis ``down`` and ``up`` restricted to output rows ``rows`` of an image ``out_size`` tall.

    ``down`` keeps the input rows whose every tap lies in the band (exact ones); ``up`` drops taps on
    input rows outside that set, which only affects rows within the halo of a cut edge."""

    def __init__(self, out_size: int, in_size: int, rows: range) -> None:
        down_indices, down_weights = contributions(out_size, in_size, in_size / out_size)
        inside = ((down_indices >= rows.start) & (down_indices < rows.stop)).all(dim=1)
        self.input_rows = torch.nonzero(inside).flatten()
        self.down = (down_indices[self.input_rows] - rows.start, down_weights[self.input_rows])
        up_indices, up_weights = contributions(in_size, out_size, out_size / in_size, antialias=False)
        up_indices, up_weights = up_indices[rows.start : rows.stop], up_weights[rows.start : rows.stop]
        position = torch.full((in_size,), -1, dtype=torch.int64)
        position[self.input_rows] = torch.arange(len(self.input_rows))
        mapped = position[up_indices]
        self.up = (mapped.clamp_min(0), torch.where(mapped >= 0, up_weights, torch.zeros_like(up_weights)))


def project_rows(
    band: torch.Tensor,
    lr: torch.Tensor,
    out_height: int,
    rows: range,
    iterations: int = DEFAULT_ITERATIONS,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Back-project ``band`` (B, C, len(rows), W), output rows ``rows`` of an ``out_height``-row upscale of
    ``lr`` (B, C, h, w, the whole input), towards ``down(x) = lr``. Rows within :func:`halo_rows` of a cut
    edge (one that is not the image's border) are approximate; all others match :func:`project`."""
    if band.shape[-2] != len(rows):
        raise ValueError(f"band has {band.shape[-2]} rows, expected {len(rows)}")
    in_height, in_width = lr.shape[-2:]
    out_width = band.shape[-1]
    row_operators = _RowOperators(out_height, in_height, rows)
    target = lr.index_select(-2, row_operators.input_rows.to(lr.device))
    down_columns = contributions(out_width, in_width, in_width / out_width)
    up_columns = contributions(in_width, out_width, out_width / in_width, antialias=False)
    low, high = value_range
    x = band
    for _ in range(iterations):
        shrunk = _apply(_apply(x, -2, *row_operators.down), -1, *down_columns)
        correction = _apply(_apply(target - shrunk, -1, *up_columns), -2, *row_operators.up)
        x = (x + correction).clamp(low, high)
    return x


def project(
    sr: torch.Tensor,
    lr: torch.Tensor,
    iterations: int = DEFAULT_ITERATIONS,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``sr`` (B, C, H, W) back-projected ``iterations`` times towards ``down(sr) = lr`` (B, C, h, w),
    clamped to ``value_range`` after each step."""
    return project_rows(sr, lr, sr.shape[-2], range(sr.shape[-2]), iterations, value_range)
