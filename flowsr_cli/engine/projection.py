"""Consistency projection: make an upscale agree with its input under the evaluation protocol's shrink.

An output ``x`` is consistent with its input ``y`` when ``down(x) = y``, ``down`` being the MATLAB
bicubic of :mod:`flowsr_cli.engine.resize` (antialiased, kernel scale = input size / output size per
axis, as LR-PSNR measures it). Iterative back-projection moves ``x`` towards that set::

    x <- x + up(y - down(x))          (from x clamped to the value range, K times, then clamped again)

with ``up`` the bicubic enlargement from the input size back to the output's. Since the residual obeys
``r <- r - down(up(r))``, the K steps are taken on the input grid, where ``down∘up`` is a small operator,
and the output is touched twice: ``x_K = x + up(r_0 + ... + r_{K-1})``, one shrink and one enlargement
whatever K is. All operators are separable and sparse; along the columns they act on whole rows, along the
rows on a band of rows, so a band of output rows can be projected on its own: an error at a band's cut
edges spreads by at most :func:`halo_rows` output rows, and rows farther than that from a cut are the same
as when projecting the whole image. Everything here is differentiable (training uses it).
"""

from __future__ import annotations

import math

import torch

from flowsr_cli.engine.resize import contributions

DEFAULT_ITERATIONS = 10
"""Back-projection iterations of ``--consistency on``."""


def halo_rows(out_size: int, in_size: int, iterations: int) -> int:
    """Output rows next to a band's cut edge that may differ from projecting the whole image.

    Per iteration an error travels at most half a ``down`` footprint (``ceil(4s) + 2`` output rows at
    scale ``s = out_size / in_size``) and half an ``up`` footprint (6 input rows, ``6 ceil(s)`` output rows)."""
    scale = out_size / in_size
    per_iteration = math.ceil(2 * scale) + 1 + 3 * math.ceil(scale)
    return iterations * per_iteration + 2 * math.ceil(scale)


Taps = tuple[torch.Tensor, torch.Tensor]
"""A sparse operator along one axis: ``(indices, weights)``, both (out, taps); out[i] = sum_t w[i, t] x[idx[i, t]]
(``contributions``' form)."""


BLOCK = 32
"""Outputs per dense block when an operator is applied as small matrix products."""

Blocks = list[tuple[slice, torch.Tensor]]
"""An operator as dense blocks of consecutive outputs: (the inputs a block reads, its float64 matrix)."""


def _blocks(taps: Taps) -> Blocks:
    """``taps`` as one dense matrix per :data:`BLOCK` outputs over the span of inputs they read (the
    operators are banded)."""
    indices, weights = taps
    blocks = []
    for start in range(0, indices.shape[0], BLOCK):
        block_indices, block_weights = indices[start : start + BLOCK], weights[start : start + BLOCK]
        used = block_indices[block_weights != 0]
        low, high = (int(used.min()), int(used.max()) + 1) if used.numel() else (0, 1)
        matrix = torch.zeros(block_indices.shape[0], high - low, dtype=torch.float64)
        rows = torch.arange(block_indices.shape[0])[:, None].expand_as(block_indices)
        matrix.index_put_((rows, (block_indices - low).clamp(0, high - low - 1)), block_weights, accumulate=True)
        blocks.append((slice(low, high), matrix))
    return blocks


def _apply(x: torch.Tensor, dim: int, blocks: Blocks) -> torch.Tensor:
    """The operator ``blocks`` along ``dim`` (-2 or -1) of ``x``, one matrix product per block."""
    parts = []
    for inputs, matrix in blocks:
        matrix = matrix.to(device=x.device, dtype=x.dtype)
        parts.append(matrix @ x[..., inputs, :] if dim == -2 else x[..., inputs] @ matrix.t())
    return torch.cat(parts, dim=dim)


def _compose(outer: Taps, inner: Taps) -> Taps:
    """The operator ``outer ∘ inner`` (``inner`` maps to the samples ``outer`` reads) as taps; an input
    may appear in several taps of one output (:func:`_apply` sums them)."""
    outer_indices, outer_weights = outer
    inner_indices, inner_weights = inner[0][outer_indices], inner[1][outer_indices]
    return inner_indices.flatten(1), (outer_weights[..., None] * inner_weights).flatten(1)


class _RowOperators:
    """The row-axis ``down`` and ``up`` restricted to output rows ``rows`` of an image ``out_size`` tall.

    ``down`` keeps the input rows whose every tap lies in the band (exact ones); ``up`` drops taps on
    input rows outside that set, which only affects rows within the halo of a cut edge."""

    def __init__(self, out_size: int, in_size: int, rows: range) -> None:
        down_indices, down_weights = contributions(out_size, in_size, in_size / out_size)
        inside = ((down_indices >= rows.start) & (down_indices < rows.stop)).all(dim=1)
        self.input_rows = torch.nonzero(inside).flatten()
        down = (down_indices[self.input_rows] - rows.start, down_weights[self.input_rows])
        up_indices, up_weights = contributions(in_size, out_size, out_size / in_size, antialias=False)
        up_indices, up_weights = up_indices[rows.start : rows.stop], up_weights[rows.start : rows.stop]
        position = torch.full((in_size,), -1, dtype=torch.int64)
        position[self.input_rows] = torch.arange(len(self.input_rows))
        mapped = position[up_indices]
        up = (mapped.clamp_min(0), torch.where(mapped >= 0, up_weights, torch.zeros_like(up_weights)))
        self.down, self.up, self.down_up = _blocks(down), _blocks(up), _blocks(_compose(down, up))


def project_rows(
    band: torch.Tensor,
    lr: torch.Tensor,
    out_height: int,
    rows: range,
    iterations: int = DEFAULT_ITERATIONS,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Back-project ``band`` (B, C, len(rows), W), output rows ``rows`` of an ``out_height``-row upscale of
    ``lr`` (B, C, h, w, the whole input), clamped to ``value_range``, ``iterations`` times towards
    ``down(x) = lr``, then clamped again. Rows within :func:`halo_rows` of a cut edge (one that is not the
    image's border) are approximate; all others match :func:`project`."""
    if band.shape[-2] != len(rows):
        raise ValueError(f"band has {band.shape[-2]} rows, expected {len(rows)}")
    if iterations == 0:
        return band.clamp(*value_range)
    in_height, in_width = lr.shape[-2:]
    out_width = band.shape[-1]
    row_operators = _RowOperators(out_height, in_height, rows)
    down_column_taps = contributions(out_width, in_width, in_width / out_width)
    up_column_taps = contributions(in_width, out_width, out_width / in_width, antialias=False)
    down_columns, up_columns = _blocks(down_column_taps), _blocks(up_column_taps)
    target = lr.index_select(-2, row_operators.input_rows.to(lr.device))
    band = band.clamp(*value_range)
    residual = target - _apply(_apply(band, -2, row_operators.down), -1, down_columns)
    total = residual
    if iterations > 1:
        down_up_columns = _blocks(_compose(down_column_taps, up_column_taps))
    for _ in range(iterations - 1):
        residual = residual - _apply(_apply(residual, -2, row_operators.down_up), -1, down_up_columns)
        total = total + residual
    correction = _apply(_apply(total, -1, up_columns), -2, row_operators.up)
    return (band + correction).clamp(*value_range)


def project(
    sr: torch.Tensor,
    lr: torch.Tensor,
    iterations: int = DEFAULT_ITERATIONS,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``sr`` (B, C, H, W) back-projected ``iterations`` times towards ``down(sr) = lr`` (B, C, h, w), then
    clamped to ``value_range``."""
    return project_rows(sr, lr, sr.shape[-2], range(sr.shape[-2]), iterations, value_range)
